#pragma once
// Small tensors read on the host: counts, losses, metrics. One place for the
// copy to CPU, the dtype conversion and the text form of a shape.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace dsk::core {

// The values of `t` (any device, any dtype) as a vector of `T`.
template <typename T>
std::vector<T> host_values(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU, c10::CppTypeToScalarType<T>::value).contiguous();
  return std::vector<T>(c.data_ptr<T>(), c.data_ptr<T>() + c.numel());
}

// "[8, 16, 16]"
template <typename Sizes>
std::string shape_text(const Sizes& shape) {
  std::string out = "[";
  for (size_t i = 0; i < static_cast<size_t>(shape.size()); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

}  // namespace dsk::core
