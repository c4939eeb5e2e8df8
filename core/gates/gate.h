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
};

struct GateShape {
  int64_t num_tasks = 1;
  int64_t num_experts = 1;
  int64_t input_dim = 1;  // p; unused by static gates
};

// Builds the gate the config names, parameters initialised as in PAPER.md
// from generators keyed by (seed, parameter name). Throws UsageError on an
// invalid config (k > num_experts, gamma <= 0, ...), naming the field.
std::unique_ptr<Gate> make_gate(const proto::GateConfig& config, const GateShape& shape,
                                uint64_t seed, at::ScalarType dtype = at::kFloat);

}  // namespace dsk::core
