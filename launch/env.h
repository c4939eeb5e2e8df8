#pragma once
// Everything dsk reads from the process environment, read once here
// (STYLE.md: only launch/ reads the environment).
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

  bool under_launcher() const { return !launcher.empty(); }
  // Intra-op threads so that ranks x threads never exceed the node's cores.
  int threads_per_rank(int requested) const;
};

LaunchEnv detect_launch_env();

}  // namespace dsk::launch
