#include <gtest/gtest.h>

#include "core/params.h"

namespace dsk::core {
namespace {

TEST(Params, GeneratorDependsOnlyOnSeedAndName) {
  auto g1 = make_generator(3, "experts.2.fc1.weight");
  auto g2 = make_generator(3, "experts.2.fc1.weight");
  auto g3 = make_generator(3, "experts.3.fc1.weight");
  at::Tensor a = uniform_parameter({5}, 1.0, g1);
  at::Tensor b = uniform_parameter({5}, 1.0, g2);
  at::Tensor c = uniform_parameter({5}, 1.0, g3);
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_FALSE(at::equal(a, c));
  EXPECT_TRUE(a.requires_grad());
  EXPECT_LE(a.abs().max().item<float>(), 1.0f);
}

}  // namespace
}  // namespace dsk::core
