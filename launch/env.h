#pragma once
// Everything dsk reads from the process environment, read once here
// (STYLE.md: only launch/ reads the environment).
#include <cstdint>
#include <string>

namespace dsk::launch {

struct LaunchEnv {
  // Which launcher started us ("openmpi", "mpich", "slurm", "pmix") or
  // empty when run directly (a world of one, MPI not initialised).
  std::string launcher;
  int local_rank = 0;
  int local_size = 1;
  // CPUs this process may run on (affinity mask), and on the node.
  int cpus_allowed = 1;
  int cpus_on_node = 1;

  // Test hook (DSK_TEST_STALL_RANK, DSK_TEST_STALL_STEP): that world rank
  // stops answering at that step, as a hung peer would. -1 = off.
  int test_stall_rank = -1;
  int64_t test_stall_step = -1;
  // Test hook (DSK_TEST_PAUSE_IN_SAVE_RANK): that world rank pauses forever
  // in the middle of writing a checkpoint. -1 = off.
  int test_pause_in_save_rank = -1;

  bool under_launcher() const { return !launcher.empty(); }
  // Intra-op threads so that ranks x threads never exceed the node's cores.
  int threads_per_rank(int requested) const;
};

LaunchEnv detect_launch_env();

}  // namespace dsk::launch
