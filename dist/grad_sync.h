#pragma once
// Gradient sync so that one optimizer step equals the one-process step on
// the global batch. The loss on every rank is already its share of the
// global-batch mean (local sum / global batch size), so gradients are summed,
// never averaged:
//   - replicated parameters (gates, towers): every rank saw different
//     examples -> sum over the world;
//   - expert parameters: the owner already holds the contributions of every
//     rank of its expert group (they came back through the all-to-all), so
//     only the D replicas of the shard are summed, over the replica group.
// Each group's gradients travel as one flat bucket, reused across steps.
#include <ATen/ATen.h>

#include "core/params.h"
#include "dist/communicator.h"

namespace dsk::dist {

class GradientBucket {
 public:
  GradientBucket(core::NamedTensors params, Communicator& comm);
  // Sums the .grad() of every parameter over `comm`, in place. A missing
  // gradient counts as zero (and is materialised), so all ranks send the
  // same bucket layout whatever their local routing was.
  void all_reduce_sum();

 private:
  core::NamedTensors params_;
  Communicator& comm_;
  at::Tensor flat_;
};

// The two buckets of an MoE model: replicated parameters over the world,
// expert parameters over their replica group.
class GradientSync {
 public:
  GradientSync(core::NamedTensors replicated, Communicator& world, core::NamedTensors experts,
               Communicator& replica_group)
      : replicated_(std::move(replicated), world), experts_(std::move(experts), replica_group) {}
  void all_reduce_sum() {
    replicated_.all_reduce_sum();
    experts_.all_reduce_sum();
  }

 private:
  GradientBucket replicated_;
  GradientBucket experts_;
};

}  // namespace dsk::dist
