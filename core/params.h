#pragma once
// Parameters are plain tensors with requires_grad, named by their global
// identity ("experts.3.fc1.weight", "towers.w1"). The name, never the rank
// that holds it, identifies a parameter in gradient sync and checkpoints.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace dsk::core {

struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};
using NamedTensors = std::vector<NamedTensor>;

// A generator whose stream depends only on (seed, name): a parameter gets the
// same initial value whichever rank creates it and whatever else exists.
at::Generator make_generator(uint64_t seed, const std::string& name);

// Uniform(-bound, bound) of the given shape, drawn from `gen`, requires_grad.
at::Tensor uniform_parameter(at::IntArrayRef shape, double bound, at::Generator& gen,
                             at::ScalarType dtype = at::kFloat);

void prepend_prefix(NamedTensors& tensors, const std::string& prefix);

}  // namespace dsk::core
