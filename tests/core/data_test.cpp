#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/data/fashion_mnist.h"
#include "core/data/synthetic.h"
#include "core/error.h"
#include "core/proto/config.pb.h"

namespace dsk::core {
namespace {

namespace fs = std::filesystem;

const char kFashionDir[] = "/usr/share/datasets/fashion-mnist";

bool have_fashion() { return fs::exists(fs::path(kFashionDir) / "train-labels-idx1-ubyte.gz"); }

// Reading the 26 MB gzip takes a moment; every test shares one copy.
const FashionMnistSplit& real_split(bool train) {
  static FashionMnistSplit splits[2] = {read_fashion_mnist(kFashionDir, false),
                                        read_fashion_mnist(kFashionDir, true)};
  return splits[train ? 1 : 0];
}

// A per-test scratch directory, removed afterwards.
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() /
              ("dsk_data_test_" + std::to_string(::getpid()) + "_" + name)) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void put_be32(std::vector<unsigned char>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<unsigned char>(v >> s));
}

std::vector<unsigned char> idx_images(uint32_t magic, uint32_t count, uint32_t rows,
                                      uint32_t cols, size_t pixel_bytes) {
  std::vector<unsigned char> out;
  put_be32(out, magic);
  put_be32(out, count);
  put_be32(out, rows);
  put_be32(out, cols);
  for (size_t i = 0; i < pixel_bytes; ++i) out.push_back(static_cast<unsigned char>(i * 7));
  return out;
}

std::vector<unsigned char> idx_labels(uint32_t magic, uint32_t count, size_t label_bytes) {
  std::vector<unsigned char> out;
  put_be32(out, magic);
  put_be32(out, count);
  for (size_t i = 0; i < label_bytes; ++i) out.push_back(static_cast<unsigned char>(i % 10));
  return out;
}

void write_gz(const std::string& path, const std::vector<unsigned char>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  if (!bytes.empty()) {
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
  }
  ASSERT_EQ(gzclose(f), Z_OK);
}

void write_raw(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// Runs `fn`, expects a one-line UsageError mentioning every string in `needles`.
template <typename Fn>
void expect_usage_error(Fn fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no UsageError";
  } catch (const UsageError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg << " lacks " << n;
  }
}

// A split of random sparse images: about half the pixels are 0, so the max
// overlay and the "A where B is 0" rule are both exercised.
FashionMnistSplit random_split(int64_t n, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::Tensor pix = at::randint(1, 256, {n, 28, 28}, gen, at::TensorOptions().dtype(at::kLong));
  at::Tensor keep = at::rand({n, 28, 28}, gen).lt(0.5);
  FashionMnistSplit s;
  s.images = (pix * keep).to(at::kByte);
  s.labels = at::randint(0, 10, {n}, gen, at::TensorOptions().dtype(at::kLong));
  return s;
}

// ---------------------------------------------------------------- real files

TEST(FashionMnist, ReadsRealFiles) {
  if (!have_fashion()) GTEST_SKIP() << kFashionDir << " absent (apt install dataset-fashion-mnist)";
  const auto& train = real_split(true);
  const auto& test = real_split(false);
  ASSERT_EQ(train.images.sizes(), (std::vector<int64_t>{60000, 28, 28}));
  ASSERT_EQ(test.images.sizes(), (std::vector<int64_t>{10000, 28, 28}));
  EXPECT_EQ(train.images.scalar_type(), at::kByte);
  EXPECT_EQ(train.labels.scalar_type(), at::kLong);
  EXPECT_EQ(train.labels.numel(), 60000);
  EXPECT_EQ(test.labels.numel(), 10000);
  EXPECT_EQ(train.labels.min().item<int64_t>(), 0);
  EXPECT_EQ(train.labels.max().item<int64_t>(), 9);
  // Fashion-MNIST is balanced: 6000 train and 1000 test items per class.
  EXPECT_TRUE(at::equal(at::bincount(train.labels), at::full({10}, 6000, at::kLong)));
  EXPECT_TRUE(at::equal(at::bincount(test.labels), at::full({10}, 1000, at::kLong)));
  // The usual normalisation constants: mean 0.2860, std 0.3530 on train.
  at::Tensor px = train.images.to(at::kDouble).div(255.0);
  EXPECT_NEAR(px.mean().item<double>(), 0.2860, 5e-4);
  EXPECT_NEAR(px.std().item<double>(), 0.3530, 5e-4);
}

TEST(FashionMnist, LoadDataBuildsPairsFromTheirOwnSplit) {
  if (!have_fashion()) GTEST_SKIP() << kFashionDir << " absent";
  proto::DataConfig config;
  config.set_path(kFashionDir);
  config.set_train_size(300);
  config.set_test_size(200);
  config.set_seed(11);
  DataSplits s = load_data(config);
  ASSERT_EQ(s.train.inputs.sizes(), (std::vector<int64_t>{300, 1, 36, 36}));
  ASSERT_EQ(s.test.inputs.sizes(), (std::vector<int64_t>{200, 1, 36, 36}));
  ASSERT_EQ(s.train.targets.sizes(), (std::vector<int64_t>{300, 2}));
  EXPECT_EQ(s.train.inputs.scalar_type(), at::kByte);  // bytes in memory
  EXPECT_EQ(s.train.targets.scalar_type(), at::kLong);
  EXPECT_EQ(s.train.kind, TaskKind::kClassification);
  EXPECT_EQ(s.train.num_classes, 10);
  EXPECT_EQ(s.train.num_tasks(), 2);
  // The model sees float32 in [0, 1], exactly byte / 255.
  at::Tensor model_input = s.train.input_slice(0, 300);
  EXPECT_EQ(model_input.scalar_type(), at::kFloat);
  EXPECT_GE(model_input.min().item<float>(), 0.0f);
  EXPECT_LE(model_input.max().item<float>(), 1.0f);
  EXPECT_TRUE(at::equal(model_input, s.train.inputs.to(at::kFloat) / 255.0));
  at::Tensor some_rows = at::tensor(std::vector<int64_t>{7, 0, 299}, at::kLong);
  EXPECT_TRUE(at::equal(s.train.input_rows(some_rows), model_input.index_select(0, some_rows)));
  // Train pairs are the train images, test pairs the test images.
  Dataset train = build_multi_fashion(real_split(true), multi_fashion_pairs(60000, 300, 11, true));
  Dataset test = build_multi_fashion(real_split(false), multi_fashion_pairs(10000, 200, 11, false));
  EXPECT_TRUE(at::equal(s.train.inputs, train.inputs));
  EXPECT_TRUE(at::equal(s.train.targets, train.targets));
  EXPECT_TRUE(at::equal(s.test.inputs, test.inputs));
  EXPECT_TRUE(at::equal(s.test.targets, test.targets));
  // Same seed, same data; another seed, other data.
  DataSplits again = load_data(config);
  EXPECT_TRUE(at::equal(again.train.inputs, s.train.inputs));
  EXPECT_TRUE(at::equal(again.test.targets, s.test.targets));
  config.set_seed(12);
  DataSplits other = load_data(config);
  EXPECT_FALSE(at::equal(other.train.inputs, s.train.inputs));
  EXPECT_FALSE(at::equal(other.test.inputs, s.test.inputs));
}

TEST(FashionMnist, DefaultSizesAreWholeSplits) {
  if (!have_fashion()) GTEST_SKIP() << kFashionDir << " absent";
  proto::DataConfig config;
  DataSplits s = load_data(config);
  EXPECT_EQ(s.train.size(), 60000);
  EXPECT_EQ(s.test.size(), 10000);
  EXPECT_TRUE(s.train.task_cluster.empty());
}

// ---------------------------------------------------------------- construction

TEST(MultiFashion, OverlayIsMaxOfShiftedItems) {
  FashionMnistSplit split = random_split(20, 3);
  at::Tensor pairs = multi_fashion_pairs(20, 20, 5, true);
  Dataset d = build_multi_fashion(split, pairs);
  ASSERT_EQ(d.inputs.sizes(), (std::vector<int64_t>{20, 1, 36, 36}));
  at::Tensor pix = d.inputs.squeeze(1).to(at::kLong);
  for (int64_t k = 0; k < 20; ++k) {
    const int64_t ia = pairs[k][0].item<int64_t>();
    const int64_t ib = pairs[k][1].item<int64_t>();
    at::Tensor a = at::zeros({36, 36}, at::kLong);
    at::Tensor b = at::zeros({36, 36}, at::kLong);
    a.slice(0, 0, 28).slice(1, 0, 28).copy_(split.images[ia]);
    b.slice(0, 8, 36).slice(1, 8, 36).copy_(split.images[ib]);
    EXPECT_TRUE(at::equal(pix[k], at::maximum(a, b))) << "pair " << k;
    // Where B is blank the canvas is exactly A, in the A window and beyond.
    at::Tensor blank_b = b.eq(0);
    EXPECT_TRUE(at::equal(pix[k].masked_select(blank_b), a.masked_select(blank_b)));
    EXPECT_TRUE(at::equal(pix[k].slice(0, 0, 28).slice(1, 0, 28).masked_select(
                              b.slice(0, 0, 28).slice(1, 0, 28).eq(0)),
                          split.images[ia].to(at::kLong).masked_select(
                              b.slice(0, 0, 28).slice(1, 0, 28).eq(0))));
    // Outside both windows the canvas is empty.
    EXPECT_EQ(pix[k].slice(0, 28, 36).slice(1, 0, 8).abs().sum().item<int64_t>(), 0);
    EXPECT_EQ(pix[k].slice(0, 0, 8).slice(1, 28, 36).abs().sum().item<int64_t>(), 0);
    EXPECT_EQ(d.targets[k][0].item<int64_t>(), split.labels[ia].item<int64_t>());
    EXPECT_EQ(d.targets[k][1].item<int64_t>(), split.labels[ib].item<int64_t>());
  }
}

TEST(MultiFashion, PairsAreSeededPermutationAndOtherImage) {
  at::Tensor p = multi_fashion_pairs(100, 100, 9, true);
  ASSERT_EQ(p.sizes(), (std::vector<int64_t>{100, 2}));
  EXPECT_TRUE(at::equal(std::get<0>(p.select(1, 0).sort()), at::arange(100, at::kLong)));
  EXPECT_FALSE(p.select(1, 0).eq(p.select(1, 1)).any().item<bool>());
  EXPECT_GE(p.select(1, 1).min().item<int64_t>(), 0);
  EXPECT_LT(p.select(1, 1).max().item<int64_t>(), 100);
  EXPECT_TRUE(at::equal(p, multi_fashion_pairs(100, 100, 9, true)));
  EXPECT_FALSE(at::equal(p, multi_fashion_pairs(100, 100, 10, true)));
  EXPECT_FALSE(at::equal(p, multi_fashion_pairs(100, 100, 9, false)));
  // B is uniform over the others: over many draws every image shows up.
  at::Tensor many = multi_fashion_pairs(10, 5000, 1, true);
  EXPECT_EQ(at::bincount(many.select(1, 1), {}, 10).min().item<int64_t>() > 350, true);
  // More pairs than images wrap the permutation: each image is A 2 or 3 times.
  at::Tensor wrap = multi_fashion_pairs(100, 250, 9, true);
  at::Tensor uses = at::bincount(wrap.select(1, 0), {}, 100);
  EXPECT_GE(uses.min().item<int64_t>(), 2);
  EXPECT_LE(uses.max().item<int64_t>(), 3);
  EXPECT_TRUE(at::equal(wrap.slice(0, 0, 100), p));
}

TEST(MultiFashion, Builds60000PairsQuickly) {
  FashionMnistSplit split = have_fashion() ? real_split(true) : random_split(60000, 1);
  auto t0 = std::chrono::steady_clock::now();
  Dataset d = build_multi_fashion(split, multi_fashion_pairs(60000, 60000, 7, true));
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ timing   ] 60000 Multi-Fashion-MNIST pairs built in %.3f s\n", s);
  EXPECT_EQ(d.size(), 60000);
  EXPECT_LT(s, 2.0);
}

TEST(MultiFashion, RejectsNegativeSize) {
  proto::DataConfig config;
  config.set_path("/nonexistent");
  config.set_train_size(-3);
  expect_usage_error([&] { load_data(config); }, {"data.train_size = -3"});
}

// ---------------------------------------------------------------- bad files

TEST(FashionMnistErrors, MissingFile) {
  TempDir dir("missing");
  const std::string path = dir.file("train-images-idx3-ubyte.gz");
  expect_usage_error([&] { read_fashion_mnist(dir.str(), true); }, {path, "missing"});
}

TEST(FashionMnistErrors, BadMagic) {
  TempDir dir("magic");
  const std::string path = dir.file("t10k-images-idx3-ubyte.gz");
  write_gz(path, idx_images(0x00000801, 2, 28, 28, 2 * 784));
  expect_usage_error([&] { read_fashion_mnist(dir.str(), false); }, {path, "bad magic 0x00000801"});
}

TEST(FashionMnistErrors, BadLabelMagic) {
  TempDir dir("label_magic");
  write_gz(dir.file("t10k-images-idx3-ubyte.gz"), idx_images(0x803, 2, 28, 28, 2 * 784));
  const std::string path = dir.file("t10k-labels-idx1-ubyte.gz");
  write_gz(path, idx_labels(0x803, 2, 2));
  expect_usage_error([&] { read_fashion_mnist(dir.str(), false); }, {path, "bad magic 0x00000803"});
}

TEST(FashionMnistErrors, WrongDims) {
  TempDir dir("dims");
  const std::string path = dir.file("train-images-idx3-ubyte.gz");
  write_gz(path, idx_images(0x803, 2, 32, 28, 2 * 32 * 28));
  expect_usage_error([&] { read_fashion_mnist(dir.str(), true); }, {path, "wrong dims", "32x28"});
}

TEST(FashionMnistErrors, TruncatedPixels) {
  TempDir dir("truncated");
  const std::string path = dir.file("train-images-idx3-ubyte.gz");
  write_gz(path, idx_images(0x803, 60000, 28, 28, 1234));
  expect_usage_error([&] { read_fashion_mnist(dir.str(), true); },
                     {path, "truncated: header promises 60000 images of 28x28, file holds 1234 bytes"});
}

TEST(FashionMnistErrors, TruncatedGzipStream) {
  TempDir dir("gzip_cut");
  const std::string path = dir.file("train-images-idx3-ubyte.gz");
  write_gz(path, idx_images(0x803, 50, 28, 28, 50 * 784));
  fs::resize_file(path, fs::file_size(path) / 2);  // a download cut short
  expect_usage_error([&] { read_fashion_mnist(dir.str(), true); }, {path, "truncated"});
}

TEST(FashionMnistErrors, TruncatedHeader) {
  TempDir dir("header");
  const std::string path = dir.file("train-images-idx3-ubyte.gz");
  write_gz(path, {0, 0, 8, 3, 0, 0});
  expect_usage_error([&] { read_fashion_mnist(dir.str(), true); }, {path, "truncated", "header"});
}

TEST(FashionMnistErrors, TruncatedLabels) {
  TempDir dir("trunc_labels");
  write_gz(dir.file("t10k-images-idx3-ubyte.gz"), idx_images(0x803, 5, 28, 28, 5 * 784));
  const std::string path = dir.file("t10k-labels-idx1-ubyte.gz");
  write_gz(path, idx_labels(0x801, 5, 3));
  expect_usage_error([&] { read_fashion_mnist(dir.str(), false); }, {path, "truncated", "3 bytes"});
}

TEST(FashionMnistErrors, CountMismatch) {
  TempDir dir("count");
  const std::string images = dir.file("train-images-idx3-ubyte.gz");
  const std::string labels = dir.file("train-labels-idx1-ubyte.gz");
  write_gz(images, idx_images(0x803, 4, 28, 28, 4 * 784));
  write_gz(labels, idx_labels(0x801, 3, 3));
  expect_usage_error([&] { read_fashion_mnist(dir.str(), true); },
                     {labels, images, "count mismatch", "3 labels", "4 images"});
}

TEST(FashionMnistErrors, LabelOutOfRange) {
  TempDir dir("range");
  write_gz(dir.file("train-images-idx3-ubyte.gz"), idx_images(0x803, 3, 28, 28, 3 * 784));
  auto bytes = idx_labels(0x801, 3, 3);
  bytes.back() = 12;
  const std::string path = dir.file("train-labels-idx1-ubyte.gz");
  write_gz(path, bytes);
  expect_usage_error([&] { read_fashion_mnist(dir.str(), true); }, {path, "label 12", "index 2"});
}

TEST(FashionMnist, ReadsUncompressedFiles) {
  TempDir dir("raw");
  write_raw(dir.file("t10k-images-idx3-ubyte"), idx_images(0x803, 3, 28, 28, 3 * 784));
  write_raw(dir.file("t10k-labels-idx1-ubyte"), idx_labels(0x801, 3, 3));
  FashionMnistSplit s = read_fashion_mnist(dir.str(), false);
  ASSERT_EQ(s.images.sizes(), (std::vector<int64_t>{3, 28, 28}));
  EXPECT_EQ(s.images[0][0][1].item<int64_t>(), 7);  // byte i of the pixels is 7 i mod 256
  EXPECT_EQ(s.images[2][27][27].item<int64_t>(), (3 * 784 - 1) * 7 % 256);
  EXPECT_TRUE(at::equal(s.labels, at::arange(3, at::kLong)));
}

// ---------------------------------------------------------------- synthetic

proto::DataConfig synthetic_config(int tasks, int clusters, double noise = 0.1) {
  proto::DataConfig c;
  c.set_type(proto::DataConfig::SYNTHETIC);
  c.set_seed(5);
  auto* s = c.mutable_synthetic();
  s->set_num_tasks(tasks);
  s->set_num_clusters(clusters);
  s->set_input_dim(16);
  s->set_train_size(3000);
  s->set_test_size(500);
  s->set_noise(noise);
  return c;
}

TEST(Synthetic, ShapesAndClusters) {
  DataSplits s = load_data(synthetic_config(8, 3));
  ASSERT_EQ(s.train.inputs.sizes(), (std::vector<int64_t>{3000, 16}));
  ASSERT_EQ(s.train.targets.sizes(), (std::vector<int64_t>{3000, 8}));
  ASSERT_EQ(s.test.inputs.sizes(), (std::vector<int64_t>{500, 16}));
  ASSERT_EQ(s.test.targets.sizes(), (std::vector<int64_t>{500, 8}));
  EXPECT_EQ(s.train.inputs.scalar_type(), at::kFloat);
  EXPECT_EQ(s.train.targets.scalar_type(), at::kFloat);
  EXPECT_EQ(s.train.kind, TaskKind::kRegression);
  EXPECT_EQ(s.train.task_cluster, (std::vector<int64_t>{0, 1, 2, 0, 1, 2, 0, 1}));
  EXPECT_EQ(s.test.task_cluster, s.train.task_cluster);
  EXPECT_TRUE(at::isfinite(s.train.targets).all().item<bool>());
  EXPECT_FALSE(at::equal(s.train.inputs.slice(0, 0, 500), s.test.inputs));
}

TEST(Synthetic, Deterministic) {
  proto::DataConfig c = synthetic_config(4, 2);
  DataSplits a = load_data(c);
  DataSplits b = load_data(c);
  EXPECT_TRUE(at::equal(a.train.inputs, b.train.inputs));
  EXPECT_TRUE(at::equal(a.train.targets, b.train.targets));
  EXPECT_TRUE(at::equal(a.test.targets, b.test.targets));
  c.set_seed(6);
  DataSplits d = load_data(c);
  EXPECT_FALSE(at::equal(a.train.inputs, d.train.inputs));
  EXPECT_FALSE(at::equal(a.train.targets, d.train.targets));
}

TEST(Synthetic, NoiseHasTheConfiguredStd) {
  DataSplits clean = load_data(synthetic_config(4, 2, 0.0));
  DataSplits noisy = load_data(synthetic_config(4, 2, 0.3));
  EXPECT_TRUE(at::equal(clean.train.inputs, noisy.train.inputs));
  at::Tensor diff = noisy.train.targets - clean.train.targets;
  EXPECT_NEAR(diff.std().item<double>(), 0.3, 0.02);
  EXPECT_NEAR(diff.mean().item<double>(), 0.0, 0.02);
}

TEST(Synthetic, SameClusterTasksCorrelateMore) {
  for (uint64_t seed : {1, 2, 3}) {
    proto::DataConfig c = synthetic_config(8, 2, 0.0);
    c.set_seed(seed);
    c.mutable_synthetic()->set_train_size(20000);
    DataSplits s = load_data(c);
    at::Tensor y = s.train.targets.to(at::kDouble);
    y = (y - y.mean(0, true)) / y.std(0, true, true);
    at::Tensor corr = y.t().matmul(y) / static_cast<double>(y.size(0) - 1);
    double min_same = 1.0, max_cross = -1.0;
    for (int i = 0; i < 8; ++i) {
      for (int j = i + 1; j < 8; ++j) {
        double r = corr[i][j].item<double>();
        if (s.train.task_cluster[i] == s.train.task_cluster[j]) {
          min_same = std::min(min_same, r);
        } else {
          max_cross = std::max(max_cross, r);
        }
      }
    }
    std::printf("[ synth    ] seed %d: min same-cluster corr %.3f, max cross-cluster corr %.3f\n",
                static_cast<int>(seed), min_same, max_cross);
    EXPECT_GT(min_same, 0.7) << "seed " << seed;
    EXPECT_GT(min_same, max_cross + 0.2) << "seed " << seed;
  }
}

TEST(Synthetic, ValidationNamesTheField) {
  auto with = [](auto edit) {
    proto::DataConfig c = synthetic_config(8, 2);
    edit(*c.mutable_synthetic());
    return c;
  };
  using S = proto::SyntheticConfig;
  expect_usage_error([&] { load_data(with([](S& s) { s.set_num_tasks(0); })); },
                     {"data.synthetic.num_tasks = 0"});
  expect_usage_error([&] { load_data(with([](S& s) { s.set_num_clusters(0); })); },
                     {"data.synthetic.num_clusters = 0"});
  expect_usage_error([&] { load_data(with([](S& s) { s.set_num_clusters(9); })); },
                     {"config: data.synthetic.num_clusters = 9 exceeds data.synthetic.num_tasks = 8"});
  expect_usage_error([&] { load_data(with([](S& s) { s.set_input_dim(0); })); },
                     {"data.synthetic.input_dim = 0"});
  expect_usage_error([&] { load_data(with([](S& s) { s.set_train_size(0); })); },
                     {"data.synthetic.train_size = 0"});
  expect_usage_error([&] { load_data(with([](S& s) { s.set_test_size(-1); })); },
                     {"data.synthetic.test_size = -1"});
  expect_usage_error([&] { load_data(with([](S& s) { s.set_noise(-0.5); })); },
                     {"data.synthetic.noise"});
  expect_usage_error([&] { load_data(with([](S& s) { s.set_task_perturbation(-1); })); },
                     {"data.synthetic.task_perturbation"});
}

}  // namespace
}  // namespace dsk::core
