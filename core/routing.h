#pragma once
// The routing plan of one batch: the union over tasks of the (example,
// expert) pairs with nonzero gate weight. A pair that no task weighs is never
// computed: its weight is exactly 0, and so is every gradient through it
// (docs/architecture.md, "Why dropping zero pairs is exact").
#include <ATen/ATen.h>

namespace dsk::core {

struct RoutingPlan {
  // [P] int64 each; pairs sorted by expert, then by example, so the rows for
  // one owner rank (a contiguous block of experts) are contiguous.
  at::Tensor example_index;
  at::Tensor expert_index;
  // [n] int64: pairs per expert.
  at::Tensor rows_per_expert;
};

// weights: [T, B, n]. Reads the weights' values only (no autograd).
RoutingPlan make_routing_plan(const at::Tensor& weights);

}  // namespace dsk::core
