#pragma once
// The gate interface: one object evaluates the gates of all T tasks as one
// batched computation (tensors [T, B, ...]), never a loop over tasks.
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>

#include "core/params.h"

namespace dsk::proto {
class GateConfig;
}

namespace dsk::core {

struct GateOutput {
  // [T, B, n]; static gates expand their [T, n] weights over the batch.
  // Exact zeros are exact (0.0) so the dispatcher can drop those pairs.
  at::Tensor weights;
  // DSelect-k only: the single-expert selectors r(z^(l)), [T, B, k, n]
  // (per-example) or [T, k, n] (static). Undefined for other gates.
  at::Tensor selector_outputs;
  // Scalars, summed over tasks, selectors and (per-example) the batch:
  //   entropy_sum         = sum -r log(r + 1e-6)            (DSelect-k, else 0)
  //   nonpow2_penalty_sum = sum 1 / sum_{i<n} r_i            (0 when n = 2^m)
  // The caller scales them (coefficient, batch reduction); see docs/gates.md.
  at::Tensor entropy_sum;
  at::Tensor nonpow2_penalty_sum;
  // Top-k with model.gate.load_balance != NONE, else a zero scalar: the
  // load-balancing loss of THIS forward's batch (no coefficient), summed over
  // tasks. It is not a sum over examples (CV^2 of per-expert sums, or a
  // product of batch means), so in a multi-rank run it is per-rank local,
  // as in Switch/DeepSpeed per device; models::regularizer_share counts it
  // by the rank's share of the batch. For the exact global-batch loss,
  // all-reduce `balance` (sums) and call load_balance_loss (regularizers.h).
  at::Tensor load_balance_loss;
  // Per-expert sums over this forward's batch behind load_balance_loss, all
  // [T, n] (defined only when load_balance_loss is computed):
  //   importance = sum_b q_b                   (Shazeer: Importance)
  //   load       = sum_b P(x_b, i in top-k)    (smooth estimator with noise in
  //                training; else the count routed_count)
  //   prob_sum   = sum_b softmax(all n logits) (Switch: B * P_i)
  //   routed_count = sum_b 1{q_b,i > 0}        (no gradient; Switch: B*k*f_i)
  struct BalanceSums {
    at::Tensor importance, load, prob_sum, routed_count;
    int64_t examples = 0;
  } balance;
  // false: weights/regularizers do not depend on x (static gate), so a rank
  // holding part of a batch must count the regularizers by its share.
  bool per_example = true;
};

class Gate {
 public:
  virtual ~Gate() = default;
  // x: [B, p] in the gate's dtype. `training` turns on training-only
  // behaviour (noise). Runs in the dtype of the parameters (float32 or
  // better) whatever the precision of the rest of the model.
  virtual GateOutput forward(const at::Tensor& x, bool training) = 0;
  // Parameters with names relative to the gate ("z_weight", ...).
  virtual NamedTensors parameters() const = 0;
  virtual int64_t num_tasks() const = 0;
  virtual int64_t num_experts() const = 0;
  // Restarts the stream of training noise (noisy Top-k) from `seed`, so runs
  // and finite-difference checks are reproducible; the same seed before a
  // forward gives the same noise. A no-op for gates without noise. Default
  // stream: make_generator(construction seed, "gate.noise"), the same on
  // every rank; give each rank its own seed for independent noise.
  virtual void set_noise_seed(uint64_t /*seed*/) {}
};

struct GateShape {
  int64_t num_tasks = 1;
  int64_t num_experts = 1;
  int64_t input_dim = 1;  // p; unused by static gates
};

// Builds the gate the config names, parameters initialised as in PAPER.md
// from generators keyed by (seed, parameter name). Throws UsageError on an
// invalid config (k > num_experts, gamma <= 0, ...), naming the field.
// dtype must be float32 or float64: the routing math never runs in lower
// precision (x of any dtype is cast to it; weights come out in it).
std::unique_ptr<Gate> make_gate(const proto::GateConfig& config, const GateShape& shape,
                                uint64_t seed, at::ScalarType dtype = at::kFloat);

}  // namespace dsk::core
