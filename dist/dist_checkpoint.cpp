#include "dist/dist_checkpoint.h"

#include <google/protobuf/text_format.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "core/checkpoint/checkpoint.h"
#include "core/checkpoint/safetensors.h"
#include "core/error.h"
#include "dist/agreement.h"

namespace dsk::dist {
namespace {

namespace fs = std::filesystem;

at::Tensor bytes_tensor(const std::string& bytes) {
  at::Tensor t = at::empty({static_cast<int64_t>(bytes.size())}, at::kByte);
  if (!bytes.empty()) std::memcpy(t.data_ptr<uint8_t>(), bytes.data(), bytes.size());
  return t;
}

// Every rank's byte string, on every rank (sizes first, then padded rows).
std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& mine) {
  at::Tensor sizes = comm.all_gather(at::tensor({static_cast<int64_t>(mine.size())}, at::kLong));
  const int64_t longest = sizes.max().item<int64_t>();
  at::Tensor padded = at::zeros({longest}, at::kByte);
  if (!mine.empty()) padded.narrow(0, 0, static_cast<int64_t>(mine.size())).copy_(bytes_tensor(mine));
  at::Tensor all = comm.all_gather(padded);
  std::vector<std::string> out;
  for (int r = 0; r < comm.size(); ++r) {
    const int64_t n = sizes[r][0].item<int64_t>();
    out.emplace_back(reinterpret_cast<const char*>(all[r].data_ptr<uint8_t>()), static_cast<size_t>(n));
  }
  return out;
}

std::string broadcast_string(Communicator& comm, const std::string& value, int root) {
  at::Tensor size = at::tensor({static_cast<int64_t>(value.size())}, at::kLong);
  comm.broadcast(size, root);
  at::Tensor bytes = comm.rank() == root ? bytes_tensor(value) : at::empty({size.item<int64_t>()}, at::kByte);
  comm.broadcast(bytes, root);
  return std::string(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), static_cast<size_t>(bytes.numel()));
}

void prune(const std::string& root, int keep) {
  if (keep <= 0) return;
  std::vector<std::string> complete;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.rfind("step-", 0) == 0) complete.push_back(name);
  }
  std::sort(complete.begin(), complete.end());  // zero-padded steps sort by step
  for (size_t i = 0; i + keep < complete.size(); ++i) fs::remove_all(root + "/" + complete[i]);
}

}  // namespace

void remove_stale_saves(const std::string& root) {
  if (!fs::exists(root)) return;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (entry.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(entry.path());
  }
}

std::string save_checkpoint(const std::string& root, const proto::Config& config, const Topology& topology,
                            const CheckpointState& state, const core::NamedTensors& replicated,
                            const core::NamedTensors& experts, const SaveOptions& options) {
  Communicator& world = *topology.world;
  const std::string tmp = root + "/" + core::checkpoint_tmp_name(state.step);
  const std::string final_dir = root + "/" + core::checkpoint_dir_name(state.step);
  run_agreed(world, [&] {
    if (world.rank() == 0) {
      fs::create_directories(root);
      remove_stale_saves(root);
      fs::create_directories(tmp);
    }
  });

  // Who writes: replicated tensors once (world rank 0), each expert once
  // (replica 0's copy). Other replicas hold identical bits.
  core::NamedTensors mine;
  if (world.rank() == 0) mine = replicated;
  if (world.rank() < topology.expert_parallel_size) mine.insert(mine.end(), experts.begin(), experts.end());
  char file[64];
  std::snprintf(file, sizeof(file), "shard-%05d.safetensors", world.rank());
  proto::Manifest entries;
  run_agreed(world, [&] {
    if (mine.empty()) return;
    core::write_safetensors(tmp + "/" + file, mine);
    for (const auto& nt : mine) {
      at::Tensor value = nt.tensor.detach().to(at::kCPU).contiguous();
      auto* entry = entries.add_tensors();
      entry->set_name(nt.name);
      entry->set_file(file);
      for (int64_t d : value.sizes()) entry->add_shape(d);
      entry->set_dtype(core::safetensors_dtype(value.scalar_type()));
      entry->set_checksum(core::tensor_checksum(value));
      entry->set_bytes(static_cast<uint64_t>(value.numel() * value.element_size()));
    }
    if (world.rank() == options.pause_rank) {
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    }
  });

  const std::vector<std::string> all_entries = all_gather_strings(world, entries.SerializeAsString());
  run_agreed(world, [&] {
    if (world.rank() != 0) return;
    proto::Manifest manifest;
    for (const std::string& bytes : all_entries) {
      proto::Manifest part;
      if (!part.ParseFromString(bytes)) throw std::runtime_error("checkpoint: a rank sent unreadable entries");
      manifest.MergeFrom(part);
    }
    manifest.set_format_version(core::kCheckpointFormatVersion);
    manifest.set_step(state.step);
    *manifest.mutable_config() = config;
    auto* layout = manifest.mutable_layout();
    layout->set_world_size(world.size());
    layout->set_expert_parallel_size(topology.expert_parallel_size);
    layout->set_data_parallel_size(topology.data_parallel_size);
    manifest.mutable_data_cursor()->set_epoch(state.epoch);
    manifest.mutable_data_cursor()->set_sample_index(state.sample_index);
    manifest.set_optimizer_step(state.optimizer_step);
    manifest.set_learning_rate(state.learning_rate);
    manifest.set_regularizer_schedule_step(state.step);
    at::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
    manifest.set_cpu_rng_state(std::string(reinterpret_cast<const char*>(rng.data_ptr<uint8_t>()),
                                           static_cast<size_t>(rng.numel())));
    manifest.set_complete(true);
    std::string text;
    google::protobuf::TextFormat::PrintToString(manifest, &text);
    core::write_file_atomically(tmp + "/manifest.pbtxt", text);
    core::fsync_directory(tmp);
    if (fs::exists(final_dir)) fs::remove_all(final_dir);  // an older save of the same step
    fs::rename(tmp, final_dir);
    core::fsync_directory(root);
    core::write_file_atomically(root + "/latest", core::checkpoint_dir_name(state.step) + "\n");
    prune(root, options.keep);
  });
  return final_dir;
}

std::string agree_on_checkpoint(Communicator& world, const std::string& path, const proto::Config& config) {
  std::string chosen;
  run_agreed(world, [&] {
    if (world.rank() != 0) return;
    chosen = core::resolve_checkpoint(path);
    core::check_resumable(core::read_manifest(chosen), config, chosen);
    remove_stale_saves(fs::path(chosen).parent_path().string());
  });
  return broadcast_string(world, chosen, 0);
}

}  // namespace dsk::dist
