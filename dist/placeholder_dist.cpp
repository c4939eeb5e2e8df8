// keeps dsk_dist non-empty
namespace dsk::dist { int placeholder_dist = 0; }
