#include "core/params.h"

#include <ATen/CPUGeneratorImpl.h>

namespace dsk::core {

namespace {
// FNV-1a: stable across platforms and compilers, unlike std::hash.
uint64_t fnv1a(const std::string& text, uint64_t hash) {
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ULL;
  }
  return hash;
}
}  // namespace

at::Generator make_generator(uint64_t seed, const std::string& name) {
  uint64_t mixed = fnv1a(name, 1469598103934665603ULL ^ (seed * 0x9E3779B97F4A7C15ULL));
  return at::make_generator<at::CPUGeneratorImpl>(mixed);
}

at::Tensor uniform_parameter(at::IntArrayRef shape, double bound, at::Generator& gen,
                             at::ScalarType dtype) {
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
  t.uniform_(-bound, bound, gen);
  t.set_requires_grad(true);
  return t;
}

void prepend_prefix(NamedTensors& tensors, const std::string& prefix) {
  for (auto& nt : tensors) nt.name = prefix + nt.name;
}

}  // namespace dsk::core
