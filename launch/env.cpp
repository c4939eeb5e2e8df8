#include "launch/env.h"

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace dsk::launch {
namespace {

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  char* end = nullptr;
  long parsed = std::strtol(value, &end, 10);
  return (end && *end == '\0') ? static_cast<int>(parsed) : fallback;
}

bool has_env(const char* name) { return std::getenv(name) != nullptr; }

}  // namespace

int LaunchEnv::threads_per_rank(int requested) const {
  if (requested > 0) return requested;
  const int share = std::max(1, cpus_on_node / std::max(1, local_size));
  return std::max(1, std::min(share, cpus_allowed));
}

LaunchEnv detect_launch_env() {
  LaunchEnv env;
  if (has_env("OMPI_COMM_WORLD_SIZE")) {
    env.launcher = "openmpi";
    env.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    env.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
  } else if (has_env("PMI_SIZE") || has_env("MPI_LOCALNRANKS")) {
    env.launcher = "mpich";
    env.local_rank = env_int("MPI_LOCALRANKID", 0);
    env.local_size = env_int("MPI_LOCALNRANKS", 1);
  } else if (has_env("SLURM_PROCID") && has_env("SLURM_STEP_NUM_TASKS")) {
    env.launcher = "slurm";
    env.local_rank = env_int("SLURM_LOCALID", 0);
    env.local_size = std::max(1, env_int("SLURM_STEP_NUM_TASKS", 1) / std::max(1, env_int("SLURM_STEP_NUM_NODES", 1)));
  } else if (has_env("PMIX_RANK")) {
    env.launcher = "pmix";
  }
  env.test_stall_rank = env_int("DSK_TEST_STALL_RANK", -1);
  env.test_stall_step = env_int("DSK_TEST_STALL_STEP", -1);
  env.test_pause_in_save_rank = env_int("DSK_TEST_PAUSE_IN_SAVE_RANK", -1);
  cpu_set_t set;
  CPU_ZERO(&set);
  env.cpus_allowed = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  env.cpus_on_node = std::max(1u, std::thread::hardware_concurrency());
  return env;
}

}  // namespace dsk::launch
