#include "launch/ckpt_inspect.h"

#include <cstdio>
#include <filesystem>
#include <string>

#include "core/checkpoint/checkpoint.h"
#include "core/error.h"
#include "core/host_values.h"

namespace dsk::launch {

int run_ckpt(int argc, char** argv) {
  if (argc != 4 || std::string(argv[2]) != "inspect") {
    std::fprintf(stderr, "dsk: error: usage: dsk ckpt inspect PATH (a run directory or a checkpoint)\n");
    return 2;
  }
  try {
    const std::string dir = core::resolve_checkpoint(argv[3]);
    const proto::Manifest manifest = core::read_manifest(dir);
    std::printf("checkpoint %s\n", dir.c_str());
    std::printf("step %lld, epoch %lld, sample index %lld, optimizer step %lld, lr %g\n",
                static_cast<long long>(manifest.step()), static_cast<long long>(manifest.data_cursor().epoch()),
                static_cast<long long>(manifest.data_cursor().sample_index()),
                static_cast<long long>(manifest.optimizer_step()), manifest.learning_rate());
    std::printf("saved by %d ranks: %d expert-parallel x %d replicas; %d experts\n", manifest.layout().world_size(),
                manifest.layout().expert_parallel_size(), manifest.layout().data_parallel_size(),
                manifest.config().model().num_experts());
    uint64_t total = 0;
    for (const auto& t : manifest.tensors()) {
      const std::string shape = core::shape_text(t.shape());
      std::printf("  %-48s %-4s %-18s %10llu bytes  %s\n", t.name().c_str(), t.dtype().c_str(), shape.c_str(),
                  static_cast<unsigned long long>(t.bytes()), t.file().c_str());
      total += t.bytes();
    }
    std::printf("%d tensors, %llu bytes\n", manifest.tensors_size(), static_cast<unsigned long long>(total));
    const std::string problem = core::verify_checkpoint(dir, manifest);
    if (!problem.empty()) {
      std::printf("complete: yes; valid: no\n");
      std::fprintf(stderr, "dsk: error: %s\n", problem.c_str());
      return 2;
    }
    std::printf("complete: yes; valid: yes (every shard opens, every checksum matches)\n");
    return 0;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "dsk: error: %s\n", e.what());
    return 2;
  }
}

}  // namespace dsk::launch
