#pragma once
// Per-task gate statistics for the metrics log, batched over tasks.
#include <ATen/ATen.h>

#include "core/gates/gate.h"

namespace dsk::core {

struct GateStats {
  // [T] float64: mean over examples of the number of experts with weight != 0.
  at::Tensor mean_nonzero_experts;
  // [T] float64: fraction of single-expert selectors (over selectors and, for
  // per-example gates, examples) that are binary, i.e. every S(z_j) is 0 or
  // 1, i.e. the selector output is one-hot (max entry exactly 1). NaN for
  // gates without selectors (Top-k, softmax).
  at::Tensor binary_selector_fraction;
  // [T, n] float64: each expert's share of the task's total weight over the
  // batch, sum_b q_t,b,i / sum_b,j q_t,b,j (rows sum to 1; 0 if all weight is 0).
  at::Tensor expert_share;
};

// No gradient, no loop over tasks; reads out.weights and out.selector_outputs.
GateStats gate_statistics(const GateOutput& out);

}  // namespace dsk::core
