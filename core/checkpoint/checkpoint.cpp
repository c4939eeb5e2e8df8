#include "core/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <google/protobuf/text_format.h>
#include <google/protobuf/util/message_differencer.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "core/checkpoint/safetensors.h"
#include "core/error.h"
#include "core/host_values.h"

namespace dsk::core {
namespace {

namespace fs = std::filesystem;

std::string step_name(const char* prefix, int64_t step) {
  char text[64];
  std::snprintf(text, sizeof(text), "%sstep-%08lld", prefix, static_cast<long long>(step));
  return text;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// One open file per shard while loading: each tensor is a seek away.
class ShardCache {
 public:
  explicit ShardCache(std::string dir) : dir_(std::move(dir)) {}
  const SafetensorsFile& get(const std::string& file) {
    auto it = files_.find(file);
    if (it == files_.end()) {
      const std::string path = dir_ + "/" + file;
      if (!fs::exists(path)) throw UsageError("checkpoint: " + path + ": shard file is missing");
      it = files_.emplace(file, std::make_unique<SafetensorsFile>(path)).first;
    }
    return *it->second;
  }

 private:
  std::string dir_;
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;
};

at::Tensor read_checked(ShardCache& shards, const std::string& dir, const proto::TensorEntry& entry) {
  const std::string path = dir + "/" + entry.file();
  const SafetensorsFile& file = shards.get(entry.file());
  if (!file.contains(entry.name())) {
    throw UsageError("checkpoint: " + path + ": tensor '" + entry.name() + "' is missing from the shard");
  }
  at::Tensor value = file.read(entry.name());
  const std::vector<int64_t> manifest_shape(entry.shape().begin(), entry.shape().end());
  if (value.sizes().vec() != manifest_shape) {
    throw UsageError("checkpoint: " + path + ": tensor '" + entry.name() + "' has shape " +
                     shape_text(value.sizes().vec()) + " but the manifest says " + shape_text(manifest_shape));
  }
  if (safetensors_dtype(value.scalar_type()) != entry.dtype()) {
    throw UsageError("checkpoint: " + path + ": tensor '" + entry.name() + "' has dtype " +
                     safetensors_dtype(value.scalar_type()) + " but the manifest says " + entry.dtype());
  }
  if (tensor_checksum(value) != entry.checksum()) {
    throw UsageError("checkpoint: " + path + ": tensor '" + entry.name() +
                     "' fails its checksum: the file is corrupt");
  }
  return value;
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) { return step_name("", step); }
std::string checkpoint_tmp_name(int64_t step) { return step_name(".tmp-", step); }

std::string resolve_checkpoint(const std::string& path) {
  if (!fs::exists(path)) throw UsageError("--resume " + path + ": no such file or directory");
  if (fs::exists(path + "/manifest.pbtxt")) return path;
  for (const std::string& root : {path + "/ckpt", path}) {
    const std::string latest = root + "/latest";
    if (!fs::exists(latest)) continue;
    std::string name = read_text(latest);
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    const std::string dir = root + "/" + name;
    if (name.empty() || !fs::exists(dir + "/manifest.pbtxt")) {
      throw UsageError("checkpoint: " + latest + " names '" + name + "', which is not a complete checkpoint");
    }
    return dir;
  }
  throw UsageError("--resume " + path + ": neither a checkpoint (no manifest.pbtxt) nor a run with ckpt/latest");
}

proto::Manifest read_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest.pbtxt";
  if (!fs::exists(path)) throw UsageError("checkpoint: " + path + ": missing: the checkpoint is incomplete");
  proto::Manifest manifest;
  if (!google::protobuf::TextFormat::ParseFromString(read_text(path), &manifest)) {
    throw UsageError("checkpoint: " + path + ": not a valid manifest");
  }
  if (manifest.format_version() != kCheckpointFormatVersion) {
    throw UsageError("checkpoint: " + path + ": format_version " + std::to_string(manifest.format_version()) +
                     ", this dsk reads " + std::to_string(kCheckpointFormatVersion));
  }
  if (!manifest.complete()) throw UsageError("checkpoint: " + path + ": not marked complete");
  return manifest;
}

void check_resumable(const proto::Manifest& manifest, const proto::Config& config, const std::string& dir) {
  const std::string where = "checkpoint: " + dir + "/manifest.pbtxt: ";
  auto differ = [](const google::protobuf::Message& a, const google::protobuf::Message& b) {
    std::string report;
    google::protobuf::util::MessageDifferencer differencer;
    differencer.ReportDifferencesToString(&report);
    if (differencer.Compare(a, b)) return std::string();
    const size_t newline = report.find('\n');
    return newline == std::string::npos ? report : report.substr(0, newline);
  };
  const auto& saved = manifest.config();
  if (std::string d = differ(saved.model(), config.model()); !d.empty()) {
    throw UsageError(where + "saved with a different model config (" + d + ")");
  }
  if (std::string d = differ(saved.data(), config.data()); !d.empty()) {
    throw UsageError(where + "saved with a different data config (" + d + ")");
  }
  if (saved.trainer().seed() != config.trainer().seed()) {
    throw UsageError(where + "saved with trainer.seed = " + std::to_string(saved.trainer().seed()) +
                     ", this run has " + std::to_string(config.trainer().seed()));
  }
  if (saved.trainer().global_batch_size() != config.trainer().global_batch_size()) {
    throw UsageError(where + "saved with trainer.global_batch_size = " +
                     std::to_string(saved.trainer().global_batch_size()) + ", this run has " +
                     std::to_string(config.trainer().global_batch_size()));
  }
}

void load_tensors(const std::string& dir, const proto::Manifest& manifest, const NamedTensors& tensors) {
  std::map<std::string, const proto::TensorEntry*> by_name;
  for (const auto& entry : manifest.tensors()) by_name[entry.name()] = &entry;
  ShardCache shards(dir);
  at::NoGradGuard no_grad;
  for (const auto& target : tensors) {
    auto it = by_name.find(target.name);
    if (it == by_name.end()) {
      throw UsageError("checkpoint: " + dir + "/manifest.pbtxt: no tensor '" + target.name + "'");
    }
    at::Tensor value = read_checked(shards, dir, *it->second);
    if (value.sizes() != target.tensor.sizes() || value.scalar_type() != target.tensor.scalar_type()) {
      throw UsageError("checkpoint: " + dir + "/" + it->second->file() + ": tensor '" + target.name + "' is " +
                       safetensors_dtype(value.scalar_type()) + " " + shape_text(value.sizes().vec()) + ", this model needs " +
                       safetensors_dtype(target.tensor.scalar_type()) + " " + shape_text(target.tensor.sizes().vec()));
    }
    target.tensor.copy_(value);
  }
}

std::string verify_checkpoint(const std::string& dir, const proto::Manifest& manifest) {
  ShardCache shards(dir);
  try {
    for (const auto& entry : manifest.tensors()) read_checked(shards, dir, entry);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) throw std::runtime_error(dir + ": cannot open to fsync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw std::runtime_error(dir + ": fsync failed: " + std::strerror(errno));
}

void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error(tmp + ": cannot create: " + std::strerror(errno));
  size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0) {
      ::close(fd);
      throw std::runtime_error(tmp + ": write failed: " + std::strerror(errno));
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) throw std::runtime_error(tmp + ": fsync failed: " + std::strerror(errno));
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    throw std::runtime_error(path + ": rename failed: " + std::strerror(errno));
  }
  fsync_directory(fs::path(path).parent_path().string());
}

}  // namespace dsk::core
