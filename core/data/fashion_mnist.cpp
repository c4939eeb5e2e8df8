#include "core/data/fashion_mnist.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>

#include "core/error.h"
#include "core/params.h"
// core/CMakeLists.txt passes -I core before -I . to protoc, so today the
// header lands at <build>/proto/; accept both until that is settled.
#include "core/proto/config.pb.h"

namespace dsk::core {

namespace {

constexpr uint32_t kImagesMagic = 0x00000803;
constexpr uint32_t kLabelsMagic = 0x00000801;
// A corrupt header could promise terabytes; refuse before allocating.
constexpr uint32_t kMaxItems = 1u << 24;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw UsageError("data: " + path + ": " + what);
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};
using GzPtr = std::unique_ptr<gzFile_s, GzCloser>;

class IdxFile {
 public:
  // Prefers `<dir>/<stem>.gz`, falls back to `<dir>/<stem>`: Debian ships the
  // gzip files, other mirrors ship them unpacked.
  IdxFile(const std::string& dir, const std::string& stem) {
    std::string gz = (std::filesystem::path(dir) / (stem + ".gz")).string();
    std::string raw = (std::filesystem::path(dir) / stem).string();
    std::error_code ec;
    if (std::filesystem::is_regular_file(gz, ec)) {
      path_ = gz;
    } else if (std::filesystem::is_regular_file(raw, ec)) {
      path_ = raw;
    } else {
      fail(gz, "missing (no " + raw + " either)");
    }
    file_.reset(gzopen(path_.c_str(), "rb"));
    if (!file_) fail(path_, "cannot open");
  }

  const std::string& path() const { return path_; }

  // Reads up to `len` bytes; returns how many arrived. Chunked because zlib
  // drops the count of a call that hits a truncated gzip stream.
  size_t read(void* dst, size_t len) {
    auto* out = static_cast<unsigned char*>(dst);
    size_t got = 0;
    while (got < len) {
      unsigned chunk = static_cast<unsigned>(std::min<size_t>(len - got, 1u << 20));
      int n = gzread(file_.get(), out + got, chunk);
      if (n < 0) {
        int err = 0;
        const char* msg = gzerror(file_.get(), &err);
        fail(path_, std::string("unreadable: ") + (msg ? msg : "gzip error"));
      }
      if (n == 0) break;
      got += static_cast<size_t>(n);
    }
    return got;
  }

  // Set when zlib saw a gzip stream that ends early, so the caller can say so.
  std::string stream_note() {
    int err = Z_OK;
    const char* msg = gzerror(file_.get(), &err);
    if (err == Z_OK || !msg) return "";
    return std::string(" (gzip: ") + msg + ")";
  }

  std::vector<uint32_t> header(size_t words) {
    std::vector<unsigned char> bytes(words * 4);
    size_t got = read(bytes.data(), bytes.size());
    if (got < bytes.size()) {
      fail(path_, "truncated: header needs " + std::to_string(bytes.size()) +
                      " bytes, file holds " + std::to_string(got));
    }
    std::vector<uint32_t> out(words);
    for (size_t i = 0; i < words; ++i) {
      const unsigned char* b = bytes.data() + 4 * i;  // idx is big-endian
      out[i] = (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) |
               uint32_t{b[3]};
    }
    return out;
  }

 private:
  std::string path_;
  GzPtr file_;
};

void check_count(const IdxFile& f, uint32_t count, const char* what) {
  if (count == 0) fail(f.path(), std::string("header promises no ") + what);
  if (count > kMaxItems) {
    fail(f.path(), "header promises " + std::to_string(count) + " " + what +
                       ", more than the " + std::to_string(kMaxItems) + " a reader accepts");
  }
}

at::Tensor read_images(const std::string& dir, const std::string& prefix, std::string* path) {
  IdxFile f(dir, prefix + "-images-idx3-ubyte");
  *path = f.path();
  auto h = f.header(4);
  if (h[0] != kImagesMagic) {
    fail(f.path(), "bad magic " + hex32(h[0]) + " (expected " + hex32(kImagesMagic) +
                       ", idx3 unsigned-byte images)");
  }
  if (h[2] != kFashionSide || h[3] != kFashionSide) {
    fail(f.path(), "wrong dims: images of " + std::to_string(h[2]) + "x" +
                       std::to_string(h[3]) + ", expected 28x28");
  }
  check_count(f, h[1], "images");
  const int64_t n = h[1];
  at::Tensor images = at::empty({n, kFashionSide, kFashionSide}, at::kByte);
  const size_t want = static_cast<size_t>(n) * kFashionSide * kFashionSide;
  size_t got = f.read(images.data_ptr<uint8_t>(), want);
  if (got < want) {
    fail(f.path(), "truncated: header promises " + std::to_string(n) +
                       " images of 28x28, file holds " + std::to_string(got) +
                       " bytes of pixel data" + f.stream_note());
  }
  return images;
}

at::Tensor read_labels(const std::string& dir, const std::string& prefix, int64_t num_images,
                       const std::string& images_path) {
  IdxFile f(dir, prefix + "-labels-idx1-ubyte");
  auto h = f.header(2);
  if (h[0] != kLabelsMagic) {
    fail(f.path(), "bad magic " + hex32(h[0]) + " (expected " + hex32(kLabelsMagic) +
                       ", idx1 unsigned-byte labels)");
  }
  check_count(f, h[1], "labels");
  const int64_t n = h[1];
  if (n != num_images) {
    fail(f.path(), "count mismatch: header promises " + std::to_string(n) + " labels but " +
                       images_path + " holds " + std::to_string(num_images) + " images");
  }
  at::Tensor raw = at::empty({n}, at::kByte);
  size_t got = f.read(raw.data_ptr<uint8_t>(), static_cast<size_t>(n));
  if (got < static_cast<size_t>(n)) {
    fail(f.path(), "truncated: header promises " + std::to_string(n) + " labels, file holds " +
                       std::to_string(got) + " bytes of label data" + f.stream_note());
  }
  const int64_t top = raw.max().item<int64_t>();
  if (top >= kFashionClasses) {
    const int64_t at_index = raw.ge(kFashionClasses).nonzero()[0][0].item<int64_t>();
    fail(f.path(), "label " + std::to_string(top) + " out of range [0, 10) (first bad label at index " +
                       std::to_string(at_index) + ")");
  }
  return raw.to(at::kLong);
}

void check_size(const char* field, int64_t value) {
  if (value < 0) {
    throw UsageError(std::string("config: ") + field + " = " + std::to_string(value) +
                     " must be >= 0 (0 = the whole split)");
  }
}

}  // namespace

FashionMnistSplit read_fashion_mnist(const std::string& dir, bool train) {
  const std::string prefix = train ? "train" : "t10k";
  FashionMnistSplit split;
  std::string images_path;  // named in a label-count mismatch
  split.images = read_images(dir, prefix, &images_path);
  split.labels = read_labels(dir, prefix, split.images.size(0), images_path);
  return split;
}

at::Tensor multi_fashion_pairs(int64_t num_images, int64_t size, uint64_t seed, bool train) {
  if (num_images < 2) {
    throw UsageError("data: a Multi-Fashion-MNIST pair needs two distinct images, the split has " +
                     std::to_string(num_images));
  }
  at::Generator gen =
      make_generator(seed, train ? "data.multi_fashion.train" : "data.multi_fashion.test");
  at::Tensor perm = at::randperm(num_images, gen, at::TensorOptions().dtype(at::kLong));
  // Wrapping keeps every image used as A equally often (up to one) when more
  // pairs than images are asked for.
  at::Tensor a = perm.index_select(0, at::arange(size, at::kLong).remainder_(num_images));
  // Uniform over the n-1 other images: draw from [0, n-1) and skip over a.
  at::Tensor r = at::randint(0, num_images - 1, {size}, gen, at::TensorOptions().dtype(at::kLong));
  at::Tensor b = r + r.ge(a).to(at::kLong);
  return at::stack({a, b}, 1);
}

Dataset build_multi_fashion(const FashionMnistSplit& split, const at::Tensor& pairs) {
  const int64_t n = pairs.size(0);
  at::Tensor ia = pairs.select(1, 0).contiguous();
  at::Tensor ib = pairs.select(1, 1).contiguous();
  // Overlay in uint8 and scale once: max commutes with the monotone /255.
  at::Tensor canvas = at::zeros({n, kMultiSide, kMultiSide}, at::kByte);
  canvas.slice(1, 0, kFashionSide).slice(2, 0, kFashionSide).copy_(split.images.index_select(0, ia));
  at::Tensor region = canvas.slice(1, kMultiOffset, kMultiOffset + kFashionSide)
                          .slice(2, kMultiOffset, kMultiOffset + kFashionSide);
  region.copy_(at::maximum(region, split.images.index_select(0, ib)));

  Dataset data;
  data.inputs = canvas.unsqueeze(1).contiguous();  // uint8; scaled by Dataset::as_model_input
  data.targets = at::stack({split.labels.index_select(0, ia), split.labels.index_select(0, ib)}, 1);
  data.kind = TaskKind::kClassification;
  data.num_classes = kFashionClasses;
  return data;
}

DataSplits load_multi_fashion_mnist(const proto::DataConfig& config) {
  check_size("data.train_size", config.train_size());
  check_size("data.test_size", config.test_size());
  DataSplits splits;
  {
    FashionMnistSplit train = read_fashion_mnist(config.path(), true);
    const int64_t n = config.train_size() ? config.train_size() : train.images.size(0);
    splits.train = build_multi_fashion(train, multi_fashion_pairs(train.images.size(0), n,
                                                                  config.seed(), true));
  }
  {
    FashionMnistSplit test = read_fashion_mnist(config.path(), false);
    const int64_t n = config.test_size() ? config.test_size() : test.images.size(0);
    splits.test = build_multi_fashion(test, multi_fashion_pairs(test.images.size(0), n,
                                                                config.seed(), false));
  }
  return splits;
}

}  // namespace dsk::core
