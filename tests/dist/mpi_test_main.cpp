// gtest main for the multi-rank tests (ctest runs it under mpiexec with
// several process counts). Only rank 0 prints; the failure count is reduced
// so every rank exits with the same code.
#include <gtest/gtest.h>

#include "dist/mpi/mpi_communicator.h"
#include "tests/dist/failure_only_printer.h"
#include "tests/dist/mpi_test_env.h"

namespace dsk::testing {
namespace {
dist::Communicator* g_world = nullptr;
}
dist::Communicator& test_world() { return *g_world; }
}  // namespace dsk::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  dsk::dist::MpiRuntime mpi(&argc, &argv);
  int failed = 0;
  {
    auto world = mpi.world(/*timeout_s=*/120);
    dsk::testing::g_world = world.get();
    if (world->rank() != 0) {
      auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new dsk::testing::FailureOnlyPrinter(world->rank()));
    }
    failed = RUN_ALL_TESTS();
    at::Tensor any_failed = at::tensor({static_cast<int64_t>(failed != 0)}, at::kLong);
    world->all_reduce(any_failed, dsk::dist::ReduceOp::kMax);
    failed = static_cast<int>(any_failed.item<int64_t>());
    if (failed && world->rank() == 0) std::fprintf(stderr, "a test failed on at least one rank\n");
  }
  return failed;
}
