#pragma once
// The multi-task MoE in the MMoE arrangement (Ma et al. 2018), with any of
// dsk's gates (Hazimeh et al. 2021): n shared experts sharded over the expert
// group, one gate per task (all tasks batched in one Gate), one tower per
// task (batched in TaskTowers):
//     y_t = tower_t( sum_e q_t(x)_e f_e(x) )
// Only the experts of this rank's shard exist here; the dispatcher brings
// them the rows the gates chose.
#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "core/data/dataset.h"
#include "core/experts/expert.h"
#include "core/gates/gate.h"
#include "dist/dispatcher.h"
#include "dist/topology.h"

namespace dsk::proto {
class ModelConfig;
class GateConfig;
}

namespace dsk::models {

struct ModelShape {
  int64_t num_tasks = 1;
  std::vector<int64_t> input_shape;  // per example
  int64_t output_dim = 1;            // classes per task, or 1 for regression
};

ModelShape model_shape_of(const core::Dataset& data);

// Checks the model config against the data's shape (CNN experts need
// images, widths >= 1). Throws UsageError naming the field.
void validate_model_config(const proto::ModelConfig& config, const ModelShape& shape);

class MmoeModel {
 public:
  // Parameters are initialised from (seed, global name): identical on every
  // rank and under every layout. `expert_group` must outlive the model.
  MmoeModel(const proto::ModelConfig& config, const ModelShape& shape, uint64_t seed,
            dist::Communicator& expert_group);

  struct Output {
    at::Tensor predictions;  // [T, B, output_dim]
    core::GateOutput gate;
    dist::DispatchStats dispatch;
  };
  Output forward(const at::Tensor& x, bool training);

  // Moves every parameter to `device` in place (the tensors keep their
  // identity, so NamedTensors taken before stay valid).
  void to(const at::Device& device);
  // gate.* and towers.*: identical on every rank.
  core::NamedTensors replicated_parameters() const;
  // experts.<global id>.*: this rank's shard only.
  core::NamedTensors expert_parameters() const;
  const dist::ExpertSharding& sharding() const { return dispatcher_.sharding(); }
  int64_t first_local_expert() const { return first_local_expert_; }

 private:
  std::unique_ptr<core::Gate> gate_;
  std::vector<core::ExpertNet> experts_;  // local shard
  int64_t first_local_expert_ = 0;
  dist::Dispatcher dispatcher_;
  core::TaskTowers towers_;
};

// Sum over the local batch of each task's loss: cross-entropy on logits
// (classification) or squared error (regression). predictions [T, B, C],
// targets [B, T]. Returns [T].
at::Tensor task_loss_sums(const at::Tensor& predictions, const at::Tensor& targets, core::TaskKind kind);
// [T] int64: correctly classified examples per task.
at::Tensor task_correct_counts(const at::Tensor& predictions, const at::Tensor& targets);

// The gate's regularizers as this rank's share of the training loss at
// training step `step` (1-based; it sets the entropy schedule,
// core::entropy_coefficient):
//   entropy_coefficient(config, step) * entropy + non-power-of-two penalty,
//   per-example gates: averaged over the global batch (regularizer_reduction
//     = MEAN, the default: term / global_batch) or summed over it (SUM, the
//     authors' reference: the local sum as is);
//   static gates: the term once per step, counted by this rank's share
//     local_batch / global_batch (MEAN and SUM agree);
// so the shares of all ranks add up to the one-process term. Plus, for
// Top-k with load balancing, load_balance_coef * the load-balancing loss of
// this rank's local batch * local_batch / global_batch: per-rank local (as
// Switch/DeepSpeed per device), equal to the one-process loss only in a
// world of one (docs/gates.md).
at::Tensor regularizer_share(const core::GateOutput& gate, const proto::GateConfig& config, int64_t local_batch,
                             int64_t global_batch, int64_t step);

}  // namespace dsk::models
