// keeps dsk_models non-empty
namespace dsk::models { int placeholder_models = 0; }
