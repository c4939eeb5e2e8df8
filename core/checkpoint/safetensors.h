#pragma once
// The safetensors file format, as published by Hugging Face
// (https://github.com/huggingface/safetensors):
//
//   [8 bytes]  N, the header length, unsigned 64-bit little-endian
//   [N bytes]  UTF-8 JSON object: tensor name -> {"dtype": "F32", "shape": [..],
//              "data_offsets": [begin, end]}, plus an optional "__metadata__"
//              object of string -> string. Begins with '{'; may be padded at
//              the end with spaces (0x20).
//   [rest]     the data section: each tensor little-endian, C-contiguous, at
//              [begin, end) relative to the start of the data section; the
//              tensors tile the section exactly (no gaps, no overlaps).
//
// Files written here are deterministic: tensors sorted by name, their data in
// that order, keys in the order dtype/shape/data_offsets, "__metadata__"
// first, the header padded with spaces to a multiple of 8 bytes. The same
// tensors and metadata give byte-identical files.
//
// A file that breaks the format is bad input: dsk::UsageError with one line
// "checkpoint: <path>: [tensor '<name>': ]<what is wrong>".
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/params.h"

namespace dsk::core {

struct TensorInfo {
  std::string name;
  std::string dtype;  // the format's name: "F32", "I64", "BF16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
};

// Writes `tensors` (copied to CPU, contiguous) and `metadata` to `path`
// directly, replacing any file there, then fflush + fsync. The caller owns
// temp files and renames. Throws std::invalid_argument for duplicate, empty or
// "__metadata__" names and dtypes the format lacks; std::runtime_error naming
// the path and strerror on I/O errors.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// An opened and validated safetensors file. The constructor reads and checks
// the header (and the file size against it); read() fetches one tensor with
// pread from the descriptor opened by the constructor. Copies share it.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return path_; }
  // In data-section order (ascending offsets).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // UsageError if unknown
  // A fresh CPU tensor. UsageError for an unknown name, a dtype LibTorch
  // lacks (U16, U32, U64, F8_*), or a file cut short since it was opened.
  at::Tensor read(const std::string& name) const;
  uint64_t file_size() const { return file_size_; }
  uint64_t data_start() const { return data_start_; }  // 8 + N

 private:
  struct Fd;
  std::string path_;
  std::shared_ptr<Fd> fd_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  uint64_t file_size_ = 0;
  uint64_t data_start_ = 0;
};

// XXH64 (xxHash, 64-bit, seed 0; https://github.com/Cyan4973/xxHash) of the
// tensor's bytes as stored: CPU, C-contiguous, native (little-endian) order.
// Dtype and shape are not hashed; the manifest records them separately.
uint64_t tensor_checksum(const at::Tensor& t);

// The format's name of a LibTorch dtype ("F32", "I64", ...); throws
// std::invalid_argument for a dtype the format lacks.
std::string safetensors_dtype(at::ScalarType type);

// The same hash over raw bytes (exposed for tests and manifests).
uint64_t xxh64(const void* data, size_t size, uint64_t seed = 0);

}  // namespace dsk::core
