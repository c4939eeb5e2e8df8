#include "dist/topology.h"

#include "core/error.h"

namespace dsk::dist {

Topology make_topology(Communicator& world, int expert_parallel_size) {
  const int world_size = world.size();
  const int e = expert_parallel_size == 0 ? world_size : expert_parallel_size;
  if (e < 0 || e > world_size || world_size % e != 0) {
    throw UsageError("config: parallel.expert_parallel_size = " + std::to_string(expert_parallel_size) +
                     " must divide the world size " + std::to_string(world_size) + " (0 = all ranks)");
  }
  Topology topo;
  topo.world = &world;
  topo.expert_parallel_size = e;
  topo.data_parallel_size = world_size / e;
  const int w = world.rank();
  topo.expert_group = world.split(/*color=*/w / e, /*key=*/w % e, "expert");
  topo.replica_group = world.split(/*color=*/w % e, /*key=*/w / e, "replica");
  return topo;
}

}  // namespace dsk::dist
