#pragma once
// Coefficients and reductions of the gate regularizers (docs/gates.md).
#include <ATen/ATen.h>

#include <cstdint>

#include "core/gates/gate.h"

namespace dsk::proto {
class GateConfig;
}

namespace dsk::core {

// model.gate.load_balance, without the protobuf header.
enum class LoadBalance { kNone = 0, kImportanceLoad = 1, kSwitch = 2 };
LoadBalance load_balance_of(const proto::GateConfig& config);

// The entropy coefficient at training step `step` (1-based, the trainer's
// count), from model.gate.entropy_reg and its schedule, N =
// entropy_schedule_steps:
//   CONSTANT     entropy_reg
//   LINEAR_RAMP  entropy_reg * clamp(step / N, 0, 1)
//   EXPONENTIAL  entropy_reg * (1 - exp(-max(step, 0) / N))
// A pure function; N <= 0 (rejected by make_gate) gives entropy_reg.
double entropy_coefficient(const proto::GateConfig& config, int64_t step);

// Squared coefficient of variation over the last dim with the population
// variance, var / (mean^2 + 1e-10) (tensor2tensor's cv_squared); 0 when the
// last dim has one entry. x [..., n] -> [...].
at::Tensor cv_squared(const at::Tensor& x);

// The load-balancing loss (no coefficient) from per-expert sums over a
// batch, summed over tasks; `sums` may be this rank's (GateOutput::balance)
// or all-reduced over ranks (then `examples` must be the global count).
//   IMPORTANCE_LOAD  sum_t CV^2(importance_t) + CV^2(load_t)
//   SWITCH           sum_t n * sum_i f_t,i P_t,i,
//                    f = routed_count / sum_i routed_count, P = prob_sum / examples
// NONE: a zero scalar.
at::Tensor load_balance_loss(const GateOutput::BalanceSums& sums, const proto::GateConfig& config);
at::Tensor load_balance_loss(const GateOutput::BalanceSums& sums, LoadBalance method);

}  // namespace dsk::core
