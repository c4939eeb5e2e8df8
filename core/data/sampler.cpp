#include "core/data/sampler.h"

#include <stdexcept>

#include "core/params.h"

namespace dsk::core {

EpochSampler::EpochSampler(int64_t dataset_size, uint64_t seed) : size_(dataset_size), seed_(seed) {
  if (dataset_size < 1) throw std::invalid_argument("EpochSampler: empty data set");
}

const at::Tensor& EpochSampler::permutation(int64_t epoch) {
  if (epoch != cached_epoch_) {
    at::Generator gen = make_generator(seed_, "epoch." + std::to_string(epoch));
    cached_ = at::randperm(size_, gen, at::TensorOptions().dtype(at::kLong));
    cached_epoch_ = epoch;
  }
  return cached_;
}

at::Tensor EpochSampler::indices(int64_t cursor, int64_t count) {
  std::vector<at::Tensor> parts;
  while (count > 0) {
    const int64_t epoch = cursor / size_;
    const int64_t offset = cursor % size_;
    const int64_t take = std::min(count, size_ - offset);
    parts.push_back(permutation(epoch).narrow(0, offset, take));
    cursor += take;
    count -= take;
  }
  if (parts.empty()) return at::empty({0}, at::kLong);
  return parts.size() == 1 ? parts[0].clone() : at::cat(parts);
}

std::pair<int64_t, int64_t> rank_slice(int64_t total, int rank, int world) {
  const int64_t base = total / world;
  const int64_t extra = total % world;
  const int64_t first = rank * base + std::min<int64_t>(rank, extra);
  return {first, base + (rank < extra ? 1 : 0)};
}

}  // namespace dsk::core
