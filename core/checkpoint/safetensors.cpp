#include "core/checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "core/error.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.cpp assumes a little-endian host"
#endif

namespace dsk::core {
namespace {

struct DtypeDesc {
  const char* name;
  size_t size;
  bool has_torch;
  at::ScalarType torch;
};

// Every dtype of the published format; the ones LibTorch 1.13 lacks can be
// described by a header but not read.
const DtypeDesc kDtypes[] = {
    {"BOOL", 1, true, at::kBool},        {"U8", 1, true, at::kByte},
    {"I8", 1, true, at::kChar},          {"I16", 2, true, at::kShort},
    {"I32", 4, true, at::kInt},          {"I64", 8, true, at::kLong},
    {"F16", 2, true, at::kHalf},         {"BF16", 2, true, at::kBFloat16},
    {"F32", 4, true, at::kFloat},        {"F64", 8, true, at::kDouble},
    {"U16", 2, false, at::kByte},        {"U32", 4, false, at::kByte},
    {"U64", 8, false, at::kByte},        {"F8_E5M2", 1, false, at::kByte},
    {"F8_E4M3", 1, false, at::kByte},
};

const DtypeDesc* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const char* dtype_name(at::ScalarType t) {
  for (const auto& d : kDtypes)
    if (d.has_torch && d.torch == t) return d.name;
  return nullptr;
}

// One line of valid UTF-8, whatever the file or its tensor names contain:
// control characters become spaces, bytes of broken UTF-8 become '?'.
std::string one_line(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out += (c < 0x20 || c == 0x7f) ? ' ' : static_cast<char>(c);
      ++i;
      continue;
    }
    size_t len = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
    bool ok = len != 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
    if (ok) {
      out.append(s, i, len);
      i += len;
    } else {
      out += '?';
      ++i;
    }
  }
  return out;
}

[[noreturn]] void bad_file(const std::string& path, const std::string& what) {
  throw dsk::UsageError(one_line("checkpoint: " + path + ": " + what));
}

[[noreturn]] void bad_tensor(const std::string& path, const std::string& name,
                             const std::string& what) {
  throw dsk::UsageError(one_line("checkpoint: " + path + ": tensor '" + name + "': " + what));
}

[[noreturn]] void io_error(const std::string& what, const std::string& path, int err) {
  throw std::runtime_error("checkpoint: " + what + " " + path + ": " + std::strerror(err));
}

// The header must not be absurd even when the file is huge (the reference
// implementation refuses headers over 100 MB too).
constexpr uint64_t kMaxHeader = 100ull * 1000 * 1000;

}  // namespace

// ---------------------------------------------------------------- writing

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  struct Item {
    const std::string* name;
    at::Tensor t;
    const char* dtype;
  };
  std::vector<Item> items;
  items.reserve(tensors.size());
  std::set<std::string> seen;
  for (const auto& nt : tensors) {
    if (nt.name.empty()) throw std::invalid_argument("safetensors: empty tensor name for " + path);
    if (nt.name == "__metadata__")
      throw std::invalid_argument("safetensors: tensor name '__metadata__' is reserved (" + path + ")");
    if (!seen.insert(nt.name).second)
      throw std::invalid_argument("safetensors: duplicate tensor name '" + nt.name + "' for " + path);
    if (!nt.tensor.defined())
      throw std::invalid_argument("safetensors: tensor '" + nt.name + "' is undefined (" + path + ")");
    const char* dt = dtype_name(nt.tensor.scalar_type());
    if (dt == nullptr)
      throw std::invalid_argument("safetensors: tensor '" + nt.name + "' has dtype " +
                                  std::string(c10::toString(nt.tensor.scalar_type())) +
                                  " which the format lacks (" + path + ")");
    items.push_back({&nt.name, nt.tensor.detach().to(at::kCPU).contiguous(), dt});
  }
  std::sort(items.begin(), items.end(),
            [](const Item& a, const Item& b) { return *a.name < *b.name; });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;  // std::map: sorted keys
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const auto& it : items) {
    const uint64_t nbytes = static_cast<uint64_t>(it.t.numel()) * it.t.element_size();
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = it.dtype;
    entry["shape"] = it.t.sizes().vec();
    entry["data_offsets"] = {offset, offset + nbytes};
    header[*it.name] = std::move(entry);
    offset += nbytes;
  }
  std::string text = header.dump();  // compact; UTF-8 passes through
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));

  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) io_error("cannot create", path, errno);
  auto put = [&](const void* p, size_t size) {
    if (size == 0) return;
    if (std::fwrite(p, 1, size, f) != size) {
      int err = errno;
      std::fclose(f);
      io_error("cannot write", path, err ? err : EIO);
    }
  };
  put(len, sizeof len);
  put(text.data(), text.size());
  for (const auto& it : items)
    put(it.t.data_ptr(), static_cast<size_t>(it.t.numel()) * it.t.element_size());
  if (std::fflush(f) != 0 || ::fsync(fileno(f)) != 0) {
    int err = errno;
    std::fclose(f);
    io_error("cannot write", path, err);
  }
  if (std::fclose(f) != 0) io_error("cannot close", path, errno);
}

// ---------------------------------------------------------------- reading

struct SafetensorsFile::Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

namespace {

// Reads exactly `size` bytes at `offset`; false when the file ends first.
bool pread_all(int fd, void* buf, uint64_t size, uint64_t offset, const std::string& path) {
  auto* p = static_cast<char*>(buf);
  while (size > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(size, 1ull << 30));
    ssize_t got = ::pread(fd, p, chunk, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      io_error("cannot read", path, errno);
    }
    if (got == 0) return false;
    p += got;
    size -= static_cast<uint64_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path), fd_(std::make_shared<Fd>()) {
  fd_->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_->fd < 0) bad_file(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_->fd, &st) != 0) bad_file(path, std::string("cannot stat: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) bad_file(path, "not a regular file");
  file_size_ = static_cast<uint64_t>(st.st_size);
  if (file_size_ < 8)
    bad_file(path, "file holds " + std::to_string(file_size_) +
                       " bytes, shorter than the 8-byte header length");

  unsigned char len[8];
  if (!pread_all(fd_->fd, len, 8, 0, path)) bad_file(path, "file ends inside the header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (n > file_size_ - 8)
    bad_file(path, "header length " + std::to_string(n) + " is larger than the " +
                       std::to_string(file_size_ - 8) + " bytes after it (not a safetensors file, or truncated)");
  if (n > kMaxHeader)
    bad_file(path, "header length " + std::to_string(n) + " exceeds the limit of " +
                       std::to_string(kMaxHeader) + " bytes");
  if (n < 2) bad_file(path, "header length " + std::to_string(n) + " is too short for a JSON object");
  std::string text(static_cast<size_t>(n), '\0');
  if (!pread_all(fd_->fd, text.data(), n, 8, path)) bad_file(path, "file ends inside the header");
  data_start_ = 8 + n;
  const uint64_t data_size = file_size_ - data_start_;

  if (text[0] != '{') bad_file(path, "header does not begin with '{' (not a safetensors file)");
  // nlohmann keeps the last of duplicate keys; the format wants one entry
  // per name, so the parser reports a repeated top-level key.
  std::set<std::string> keys;
  auto no_duplicates = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (depth == 1 && event == nlohmann::json::parse_event_t::key) {
      std::string key = parsed.get<std::string>();
      if (!keys.insert(key).second) bad_tensor(path, key, "appears twice in the header");
    }
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text, no_duplicates);
  } catch (const nlohmann::json::exception& e) {
    bad_file(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) bad_file(path, "header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) bad_file(path, "'__metadata__' is not an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          bad_file(path, "'__metadata__' value of '" + m.key() + "' is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) bad_tensor(path, name, "entry is not an object");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!v.contains(key)) bad_tensor(path, name, std::string("missing key '") + key + "'");
    for (auto k = v.begin(); k != v.end(); ++k)
      if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data_offsets")
        bad_tensor(path, name, "unknown key '" + k.key() + "'");
    TensorInfo info;
    info.name = name;
    if (!v["dtype"].is_string()) bad_tensor(path, name, "'dtype' is not a string");
    info.dtype = v["dtype"].get<std::string>();
    const DtypeDesc* dt = find_dtype(info.dtype);
    if (dt == nullptr) bad_tensor(path, name, "unknown dtype '" + info.dtype + "'");
    const auto& shape = v["shape"];
    if (!shape.is_array()) bad_tensor(path, name, "'shape' is not an array");
    uint64_t nbytes = dt->size;
    bool overflow = false;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) bad_tensor(path, name, "'shape' holds " + d.dump() + ", not a size");
      uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        bad_tensor(path, name, "dimension " + std::to_string(dim) + " is too large");
      info.shape.push_back(static_cast<int64_t>(dim));
      overflow = overflow || __builtin_mul_overflow(nbytes, dim, &nbytes);
    }
    if (overflow) bad_tensor(path, name, "shape " + shape.dump() + " overflows 64 bits of bytes");
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      bad_tensor(path, name, "'data_offsets' is " + off.dump() + ", not [begin, end]");
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    if (info.end < info.begin)
      bad_tensor(path, name, "data_offsets [" + std::to_string(info.begin) + ", " +
                                 std::to_string(info.end) + "] end before they begin");
    if (info.end - info.begin != nbytes)
      bad_tensor(path, name, "data_offsets [" + std::to_string(info.begin) + ", " +
                                 std::to_string(info.end) + "] span " +
                                 std::to_string(info.end - info.begin) + " bytes but " +
                                 info.dtype + " " + shape.dump() + " needs " +
                                 std::to_string(nbytes));
    tensors_.push_back(std::move(info));
  }

  // The tensors must tile the data section: sorted by offset, each begins
  // where the previous ended, the first at 0, the last at the section's end.
  std::stable_sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expect = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : tensors_) {
    if (t.begin < expect)
      bad_tensor(path, t.name, "data_offsets [" + std::to_string(t.begin) + ", " +
                                   std::to_string(t.end) + "] overlap tensor '" + prev->name +
                                   "' which ends at byte " + std::to_string(expect));
    if (t.begin > expect)
      bad_tensor(path, t.name, "data begins at byte " + std::to_string(t.begin) +
                                   " leaving a gap after byte " + std::to_string(expect) +
                                   (prev ? " (end of tensor '" + prev->name + "')" : std::string()));
    if (t.end > data_size)
      bad_tensor(path, t.name, "data ends at byte " + std::to_string(t.end) +
                                   " but the file holds " + std::to_string(data_size) +
                                   " data bytes (truncated?)");
    expect = t.end;
    prev = &t;
  }
  if (expect != data_size)
    bad_file(path, std::to_string(data_size - expect) + " bytes after the end of the last tensor's data" +
                       (prev ? " ('" + prev->name + "' ends at byte " + std::to_string(expect) + ")"
                             : std::string()));
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

bool SafetensorsFile::contains(const std::string& name) const { return index_.count(name) != 0; }

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) bad_tensor(path_, name, "no such tensor in the file");
  return tensors_[it->second];
}

at::Tensor SafetensorsFile::read(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const DtypeDesc* dt = find_dtype(ti.dtype);
  if (!dt->has_torch) bad_tensor(path_, name, "dtype " + ti.dtype + " has no LibTorch equivalent");
  at::Tensor t = at::empty(ti.shape, at::TensorOptions().dtype(dt->torch).device(at::kCPU));
  const uint64_t nbytes = ti.end - ti.begin;
  if (nbytes > 0 && !pread_all(fd_->fd, t.data_ptr(), nbytes, data_start_ + ti.begin, path_))
    bad_tensor(path_, name, "file ends inside the tensor's data (truncated since it was opened?)");
  return t;
}

// ---------------------------------------------------------------- checksum

namespace {

constexpr uint64_t P1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t P2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t P3 = 0x165667B19E3779F9ull;
constexpr uint64_t P4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t P5 = 0x27D4EB2F165667C5ull;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint32_t load32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t round64(uint64_t acc, uint64_t input) {
  acc += input * P2;
  acc = rotl(acc, 31);
  return acc * P1;
}
inline uint64_t merge64(uint64_t acc, uint64_t val) {
  acc ^= round64(0, val);
  return acc * P1 + P4;
}

}  // namespace

uint64_t xxh64(const void* data, size_t size, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  const unsigned char* const end = p + size;
  uint64_t h;
  if (size >= 32) {
    uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
    const unsigned char* const limit = end - 32;
    do {
      v1 = round64(v1, load64(p));
      v2 = round64(v2, load64(p + 8));
      v3 = round64(v3, load64(p + 16));
      v4 = round64(v4, load64(p + 24));
      p += 32;
    } while (p <= limit);
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
    h = merge64(h, v1);
    h = merge64(h, v2);
    h = merge64(h, v3);
    h = merge64(h, v4);
  } else {
    h = seed + P5;
  }
  h += static_cast<uint64_t>(size);
  while (p + 8 <= end) {
    h ^= round64(0, load64(p));
    h = rotl(h, 27) * P1 + P4;
    p += 8;
  }
  if (p + 4 <= end) {
    h ^= static_cast<uint64_t>(load32(p)) * P1;
    h = rotl(h, 23) * P2 + P3;
    p += 4;
  }
  while (p < end) {
    h ^= static_cast<uint64_t>(*p) * P5;
    h = rotl(h, 11) * P1;
    ++p;
  }
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

uint64_t tensor_checksum(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU).contiguous();
  return xxh64(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size(), 0);
}

std::string safetensors_dtype(at::ScalarType type) {
  const char* name = dtype_name(type);
  if (name == nullptr) throw std::invalid_argument(std::string("safetensors: no format dtype for ") + at::toString(type));
  return name;
}

}  // namespace dsk::core
