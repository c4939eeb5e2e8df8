#pragma once
// One-process side of the checkpoint format (docs/checkpoints.md):
//   <root>/step-00000040/manifest.pbtxt        protobuf text, written last
//   <root>/step-00000040/shard-00000.safetensors
//   <root>/latest                              "step-00000040\n", updated last
//   <root>/.tmp-step-00000060/                 a save in progress (or a
//                                              killed one: ignored, removed)
// Everything here throws UsageError with one line naming the file and the
// tensor for a missing, truncated, corrupt or mismatching checkpoint.
#include <cstdint>
#include <string>

#include "core/params.h"
#include "core/proto/checkpoint.pb.h"

namespace dsk::core {

inline constexpr int kCheckpointFormatVersion = 1;

std::string checkpoint_dir_name(int64_t step);   // "step-00000040"
std::string checkpoint_tmp_name(int64_t step);   // ".tmp-step-00000040"

// PATH may be a run directory (with ckpt/), a checkpoint root (with latest),
// or one checkpoint directory. Returns the checkpoint directory; throws
// UsageError when there is none or it is incomplete.
std::string resolve_checkpoint(const std::string& path);

// Reads and checks `dir/manifest.pbtxt` (parse, version, complete).
proto::Manifest read_manifest(const std::string& dir);

// A resumed run must train the same model on the same data stream: model,
// data, seed and global batch must match (steps, logging, lr and the layout
// may change). Throws UsageError naming the first differing field.
void check_resumable(const proto::Manifest& manifest, const proto::Config& config, const std::string& dir);

// Overwrites each tensor in `tensors` (in place, no autograd) with its saved
// value, checking that the manifest lists it and that file, shape, dtype
// and checksum agree.
void load_tensors(const std::string& dir, const proto::Manifest& manifest, const NamedTensors& tensors);

// Every shard opens, every tensor's shape, dtype and checksum match.
// Returns "" when valid, else the first problem (one line).
std::string verify_checkpoint(const std::string& dir, const proto::Manifest& manifest);

// Writes `text` to `path` through `path.tmp` + fsync + rename, then fsyncs
// the directory: a reader sees the old or the new file, never half of one.
void write_file_atomically(const std::string& path, const std::string& text);
void fsync_directory(const std::string& dir);

}  // namespace dsk::core
