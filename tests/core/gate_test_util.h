#pragma once
// Helpers shared by the gate tests.
#include <gtest/gtest.h>

#include <string>

#include "core/gates/gate.h"

namespace dsk::core::test_util {

// The gate's parameter called `name` (a failure, and an undefined tensor,
// if it has none).
inline at::Tensor gate_param(const Gate& gate, const std::string& name) {
  for (const auto& nt : gate.parameters())
    if (nt.name == name) return nt.tensor;
  ADD_FAILURE() << "no parameter " << name;
  return {};
}

}  // namespace dsk::core::test_util
