#include "core/routing.h"

namespace dsk::core {

RoutingPlan make_routing_plan(const at::Tensor& weights) {
  at::NoGradGuard no_grad;
  TORCH_CHECK(weights.dim() == 3, "make_routing_plan: weights must be [T, B, n]");
  at::Tensor used = (weights != 0).any(0);           // [B, n]
  at::Tensor pairs = used.t().nonzero();              // [P, 2] (expert, example), row-major order
  RoutingPlan plan;
  plan.expert_index = pairs.select(1, 0).contiguous();
  plan.example_index = pairs.select(1, 1).contiguous();
  plan.rows_per_expert = used.sum(0, /*keepdim=*/false, at::kLong);
  return plan;
}

}  // namespace dsk::core
