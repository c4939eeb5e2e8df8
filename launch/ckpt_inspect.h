#pragma once
// `dsk ckpt inspect PATH`: what a checkpoint holds and whether it is whole.
namespace dsk::launch {
// Exit code: 0 complete and valid, 2 missing/incomplete/invalid.
int run_ckpt(int argc, char** argv);
}  // namespace dsk::launch
