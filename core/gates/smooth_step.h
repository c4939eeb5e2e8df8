#pragma once
// The DSelect-k smooth-step (Hazimeh et al. 2021, eq. 3), exposed on its own
// so tests can pin its values and derivatives.
#include <ATen/ATen.h>

namespace dsk::core {

// S(t) = 0 for t <= -gamma/2, 1 for t >= gamma/2, and
// -2/gamma^3 t^3 + 3/(2 gamma) t + 1/2 in between. Outside the band the value
// is exactly 0 or 1 and the gradient exactly 0 (a branch, not a clamp of the
// output), which is what makes DSelect-k weights exactly sparse.
at::Tensor smooth_step(const at::Tensor& t, double gamma);

}  // namespace dsk::core
