#include "dist/sharding.h"

#include <stdexcept>

namespace dsk::dist {

ExpertSharding::ExpertSharding(int64_t num_experts, int num_shards)
    : num_experts_(num_experts), num_shards_(num_shards) {
  if (num_experts < 1 || num_shards < 1) {
    throw std::invalid_argument("ExpertSharding: need at least one expert and one shard");
  }
}

int64_t ExpertSharding::num_local(int shard) const {
  return num_experts_ / num_shards_ + (shard < num_experts_ % num_shards_ ? 1 : 0);
}

int64_t ExpertSharding::first_expert(int shard) const {
  const int64_t base = num_experts_ / num_shards_;
  const int64_t extra = num_experts_ % num_shards_;
  return shard * base + std::min<int64_t>(shard, extra);
}

int ExpertSharding::owner(int64_t expert) const {
  if (expert < 0 || expert >= num_experts_) throw std::out_of_range("ExpertSharding: expert id out of range");
  const int64_t base = num_experts_ / num_shards_;
  const int64_t extra = num_experts_ % num_shards_;
  const int64_t in_big_blocks = extra * (base + 1);
  if (expert < in_big_blocks) return static_cast<int>(expert / (base + 1));
  return static_cast<int>(extra + (expert - in_big_blocks) / base);
}

std::vector<int64_t> ExpertSharding::counts() const {
  std::vector<int64_t> out(num_shards_);
  for (int s = 0; s < num_shards_; ++s) out[s] = num_local(s);
  return out;
}

std::string ExpertSharding::describe_shard(int shard) const {
  const int64_t first = first_expert(shard), count = num_local(shard);
  if (count == 0) return "no experts";
  if (count == 1) return "expert " + std::to_string(first);
  return "experts " + std::to_string(first) + "-" + std::to_string(first + count - 1);
}

std::string ExpertSharding::describe() const {
  std::string text;
  for (int s = 0; s < num_shards_; ++s) {
    if (s) text += "; ";
    text += "rank " + std::to_string(s) + ": " + describe_shard(s);
  }
  return text;
}

}  // namespace dsk::dist
