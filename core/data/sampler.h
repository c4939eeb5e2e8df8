#pragma once
// The sample order of training: an endless stream of epochs, each a
// permutation of the data set seeded by (seed, epoch). A position in the
// stream is one global sample index (the cursor), independent of the world
// size, so a job can resume on a different number of ranks.
#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

namespace dsk::core {

class EpochSampler {
 public:
  EpochSampler(int64_t dataset_size, uint64_t seed);
  // Indices into the data set of stream positions [cursor, cursor + count);
  // a range may span epoch boundaries.
  at::Tensor indices(int64_t cursor, int64_t count);
  int64_t epoch_of(int64_t cursor) const { return cursor / size_; }

 private:
  const at::Tensor& permutation(int64_t epoch);
  int64_t size_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  at::Tensor cached_;
};

// Rows [first, first + count) of a batch of `total` rows held by `rank` of
// `world`: contiguous slices, the first total % world ranks one row longer.
std::pair<int64_t, int64_t> rank_slice(int64_t total, int rank, int world);

}  // namespace dsk::core
