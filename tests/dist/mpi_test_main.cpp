// gtest main for the multi-rank tests (ctest runs it under mpiexec with
// several process counts). Only rank 0 prints; the failure count is reduced
// so every rank exits with the same code.
#include <gtest/gtest.h>

#include <string>

#include "tests/dist/mpi_test_env.h"
#include "dist/mpi/mpi_communicator.h"

namespace dsk::testing {
namespace {
dist::Communicator* g_world = nullptr;

// Ranks other than 0 report only their failures, prefixed with the rank, so
// a failure on one rank is visible without interleaving every rank's log.
class FailureOnlyPrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailureOnlyPrinter(int rank) : rank_(rank) {}
  // gtest holds its lock while reporting a part result, so the test name
  // is remembered here rather than asked for there.
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: %s\n", rank_, test_.c_str(),
                 result.file_name() ? result.file_name() : "?", result.line_number(), result.summary());
  }

 private:
  int rank_;
  std::string test_;
};
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
