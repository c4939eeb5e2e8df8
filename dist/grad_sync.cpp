#include "dist/grad_sync.h"

namespace dsk::dist {

GradientBucket::GradientBucket(core::NamedTensors params, Communicator& comm)
    : params_(std::move(params)), comm_(comm) {
  int64_t total = 0;
  for (const auto& p : params_) total += p.tensor.numel();
  flat_ = at::zeros({total}, params_.empty() ? at::TensorOptions() : params_[0].tensor.options().requires_grad(false));
}

void GradientBucket::all_reduce_sum() {
  if (comm_.size() == 1 || params_.empty()) return;
  at::NoGradGuard no_grad;
  int64_t offset = 0;
  for (auto& p : params_) {
    const int64_t n = p.tensor.numel();
    at::Tensor slot = flat_.narrow(0, offset, n);
    if (p.tensor.grad().defined()) slot.copy_(p.tensor.grad().reshape({n}));
    else slot.zero_();
    offset += n;
  }
  comm_.all_reduce(flat_, ReduceOp::kSum);
  offset = 0;
  for (auto& p : params_) {
    const int64_t n = p.tensor.numel();
    at::Tensor summed = flat_.narrow(0, offset, n).view(p.tensor.sizes());
    if (p.tensor.grad().defined()) p.tensor.mutable_grad().copy_(summed);
    else p.tensor.mutable_grad() = summed.clone();
    offset += n;
  }
}

}  // namespace dsk::dist
