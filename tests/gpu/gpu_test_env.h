#pragma once
// The GPU test job: the MPI world plus what every rank agreed about devices.
#include <string>

#include "tests/dist/mpi_test_env.h"

namespace dsk::testing {

struct GpuTestEnv {
  // True on every rank or on none: each rank of a node has its own device.
  bool usable = false;
  std::string skip_reason;  // why not, when !usable
  int device = -1;          // this rank's CUDA ordinal (node-local rank)
};

const GpuTestEnv& gpu_env();

}  // namespace dsk::testing

// Skips the current test on every rank alike when the job has no device per
// rank; the main then exits with kSkipCode so ctest reports "Skipped".
#define DSK_REQUIRE_GPU()                                                  \
  do {                                                                     \
    if (!::dsk::testing::gpu_env().usable) GTEST_SKIP() << ::dsk::testing::gpu_env().skip_reason; \
  } while (0)
