#pragma once
// `dsk bench gate`: timings of the batched T-task gate against T one-task
// gates, one JSON object per line on stdout (docs/gates.md).
namespace dsk::launch {

// argv[0] = "dsk", argv[1] = "bench", argv[2] = what to bench ("gate").
// Returns the exit code (2 on bad usage).
int run_bench(int argc, char** argv);

}  // namespace dsk::launch
