#pragma once
// The layout W = E x D of a job: E expert-parallel ranks share one copy of
// the experts (they exchange rows in the all-to-all), D replicas of that
// group each hold a full copy. World rank w sits at expert rank w % E of
// replica w / E, so an expert group is a block of consecutive ranks (on one
// node when ranks are packed by node, where the all-to-all is heaviest).
#include <memory>

#include "dist/communicator.h"
#include "dist/sharding.h"

namespace dsk::dist {

struct Topology {
  Communicator* world = nullptr;                 // not owned
  std::unique_ptr<Communicator> expert_group;    // size E: the all-to-all
  std::unique_ptr<Communicator> replica_group;   // size D: same shard, other replicas
  int expert_parallel_size = 1;                  // E
  int data_parallel_size = 1;                    // D

  int expert_rank() const { return expert_group->rank(); }
};

// expert_parallel_size 0 means E = W. Throws UsageError (naming
// parallel.expert_parallel_size) when E does not divide the world size.
// Collective over `world`.
Topology make_topology(Communicator& world, int expert_parallel_size);

}  // namespace dsk::dist
