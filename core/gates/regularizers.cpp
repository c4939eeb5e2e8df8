// Entropy schedule, load-balancing losses and gate statistics; see
// docs/gates.md and the headers.
#include "core/gates/regularizers.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/gates/gate_stats.h"
#include "core/proto/config.pb.h"

namespace dsk::core {

double entropy_coefficient(const proto::GateConfig& config, int64_t step) {
  const double lambda = config.entropy_reg();
  const double horizon = static_cast<double>(config.entropy_schedule_steps());
  if (config.entropy_schedule() == proto::GateConfig::CONSTANT || !(horizon > 0)) return lambda;
  const double s = static_cast<double>(std::max<int64_t>(step, 0));
  if (config.entropy_schedule() == proto::GateConfig::LINEAR_RAMP)
    return lambda * std::min(1.0, s / horizon);
  return lambda * -std::expm1(-s / horizon);  // 1 - exp(-s/N), exact near 0
}

at::Tensor cv_squared(const at::Tensor& x) {
  if (x.size(-1) <= 1) return at::zeros(x.sizes().slice(0, x.dim() - 1), x.options());
  at::Tensor mean = x.mean(-1);
  at::Tensor var = (x - mean.unsqueeze(-1)).pow(2).mean(-1);
  return var / (mean * mean + 1e-10);
}

LoadBalance load_balance_of(const proto::GateConfig& config) {
  switch (config.load_balance()) {
    case proto::GateConfig::IMPORTANCE_LOAD:
      return LoadBalance::kImportanceLoad;
    case proto::GateConfig::SWITCH:
      return LoadBalance::kSwitch;
    default:
      return LoadBalance::kNone;
  }
}

at::Tensor load_balance_loss(const GateOutput::BalanceSums& sums, const proto::GateConfig& config) {
  return load_balance_loss(sums, load_balance_of(config));
}

at::Tensor load_balance_loss(const GateOutput::BalanceSums& sums, LoadBalance method) {
  switch (method) {
    case LoadBalance::kNone:
      break;
    case LoadBalance::kImportanceLoad:
      return (cv_squared(sums.importance) + cv_squared(sums.load)).sum();
    case LoadBalance::kSwitch: {
      const int64_t n = sums.prob_sum.size(-1);
      at::Tensor routed = sums.routed_count.to(sums.prob_sum.scalar_type());
      at::Tensor f = routed / routed.sum(-1, /*keepdim=*/true).clamp_min(1.0);
      at::Tensor p = sums.prob_sum / static_cast<double>(std::max<int64_t>(sums.examples, 1));
      return (f * p).sum() * static_cast<double>(n);
    }
  }
  at::ScalarType dtype = sums.prob_sum.defined() ? sums.prob_sum.scalar_type() : at::kFloat;
  return at::zeros({}, at::TensorOptions().dtype(dtype));
}

GateStats gate_statistics(const GateOutput& out) {
  at::NoGradGuard no_grad;
  GateStats stats;
  at::Tensor w = out.weights.detach().to(at::kDouble);  // [T, B, n]
  stats.mean_nonzero_experts = w.ne(0).sum(-1).to(at::kDouble).mean(-1);
  at::Tensor per_expert = w.sum(1);  // [T, n]
  at::Tensor total = per_expert.sum(-1, /*keepdim=*/true);
  stats.expert_share = at::where(total > 0, per_expert / at::where(total > 0, total, at::ones_like(total)),
                                 at::zeros_like(per_expert));
  if (out.selector_outputs.defined()) {
    at::Tensor binary = out.selector_outputs.detach().amax(-1).eq(1.0);  // [T, (B,) k]
    stats.binary_selector_fraction = binary.flatten(1).to(at::kDouble).mean(-1);
  } else {
    stats.binary_selector_fraction =
        at::full({w.size(0)}, std::numeric_limits<double>::quiet_NaN(), at::kDouble);
  }
  return stats;
}

}  // namespace dsk::core
