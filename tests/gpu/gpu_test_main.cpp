// gtest main for the GPU tests (ctest runs it under mpiexec, label gpu).
// Like tests/dist/mpi_test_main.cpp, the failure count is reduced so every
// rank exits alike. When every test skipped for want of a device the exit
// code is kSkipCode (77), which ctest's SKIP_RETURN_CODE shows as "Skipped"
// instead of passed.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <string>

#include "dist/mpi/mpi_communicator.h"
#include "dist/nccl/nccl_communicator.h"
#include "tests/dist/failure_only_printer.h"
#include "tests/gpu/gpu_test_env.h"

namespace dsk::testing {
namespace {
constexpr int kSkipCode = 77;
dist::Communicator* g_world = nullptr;
GpuTestEnv g_env;

// Every rank must take the same decision, or one would enter a collective
// alone and wait for the deadline.
GpuTestEnv agree_on_devices(dist::Communicator& world) {
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world.rank(), MPI_INFO_NULL, &node);
  int local_rank = 0, local_size = 1;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_size(node, &local_size);
  MPI_Comm_free(&node);
  const int devices = dist::cuda_device_count();
  at::Tensor worst = at::tensor({static_cast<int64_t>(devices), static_cast<int64_t>(devices >= local_size)}, at::kLong);
  world.all_reduce(worst, dist::ReduceOp::kMin);
  GpuTestEnv env;
  env.device = local_rank;
  if (worst[0].item<int64_t>() == 0) {
    env.skip_reason = "no CUDA device on at least one rank (cudaGetDeviceCount failed or returned 0)";
  } else if (worst[1].item<int64_t>() == 0) {
    env.skip_reason = "fewer CUDA devices than ranks on a node (NCCL needs one device per rank)";
  } else {
    env.usable = true;
  }
  return env;
}

}  // namespace
dist::Communicator& test_world() { return *g_world; }
const GpuTestEnv& gpu_env() { return g_env; }
}  // namespace dsk::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  dsk::dist::MpiRuntime mpi(&argc, &argv);
  int code = 0;
  {
    auto world = mpi.world(/*timeout_s=*/120);
    dsk::testing::g_world = world.get();
    dsk::testing::g_env = dsk::testing::agree_on_devices(*world);
    if (world->rank() != 0) {
      auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new dsk::testing::FailureOnlyPrinter(world->rank()));
    } else if (!dsk::testing::g_env.usable) {
      std::printf("dsk_gpu_tests: skipping: %s\n", dsk::testing::g_env.skip_reason.c_str());
    }
    const int failed = RUN_ALL_TESTS();
    const auto* unit = ::testing::UnitTest::GetInstance();
    const bool all_skipped = unit->test_to_run_count() > 0 && unit->skipped_test_count() == unit->test_to_run_count();
    at::Tensor flags = at::tensor({static_cast<int64_t>(failed != 0), static_cast<int64_t>(!all_skipped)}, at::kLong);
    world->all_reduce(flags, dsk::dist::ReduceOp::kMax);
    if (flags[0].item<int64_t>() != 0) {
      if (world->rank() == 0) std::fprintf(stderr, "a test failed on at least one rank\n");
      code = 1;
    } else if (flags[1].item<int64_t>() == 0 && !dsk::testing::g_env.usable) {
      code = dsk::testing::kSkipCode;
    }
  }
  return code;
}
