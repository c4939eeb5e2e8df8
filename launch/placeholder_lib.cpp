// Keeps dsk_launch_lib non-empty until the trainer lands.
namespace dsk::launch { int placeholder_lib = 0; }
