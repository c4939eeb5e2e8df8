#pragma once
// Fashion-MNIST idx reader (Xiao et al. 2017) and the Multi-Fashion-MNIST
// pairs built from it (Sener & Koltun 2018; Lin et al. 2019). docs/data.md
// gives the exact construction.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "core/data/dataset.h"

namespace dsk::core {

inline constexpr int64_t kFashionSide = 28;   // source image side
inline constexpr int64_t kMultiSide = 36;     // overlay canvas side
inline constexpr int64_t kMultiOffset = 8;    // top-left corner of item B
inline constexpr int64_t kFashionClasses = 10;

struct FashionMnistSplit {
  at::Tensor images;  // uint8 [N, 28, 28]
  at::Tensor labels;  // int64 [N], in [0, 10)
};

// Reads {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] from `dir`; the
// `.gz` name is tried first, then the raw one (zlib reads both). Throws
// UsageError with one line naming the file for a missing file, bad magic,
// wrong dims, truncated data or an image/label count mismatch.
FashionMnistSplit read_fashion_mnist(const std::string& dir, bool train);

// [size, 2] int64 (index of A, index of B) into a split of `num_images`
// images. A walks a seeded permutation (wrapping when size > num_images);
// B is uniform over the other images. The stream depends only on
// (seed, train), so train and test pairs never share randomness.
at::Tensor multi_fashion_pairs(int64_t num_images, int64_t size, uint64_t seed, bool train);

// Overlays the pairs: A at (0, 0), B at (8, 8) on a 36x36 canvas, pixel-wise
// max, scaled to [0, 1]. targets[:, 0] = label of A, targets[:, 1] = label of B.
Dataset build_multi_fashion(const FashionMnistSplit& split, const at::Tensor& pairs);

// Train pairs from the train split, test pairs from the test split, sizes
// from config.train_size / test_size (0 = the split's image count).
DataSplits load_multi_fashion_mnist(const proto::DataConfig& config);

}  // namespace dsk::core
