#pragma once
// Expert placement: n experts over E expert-parallel ranks in balanced
// contiguous blocks. The first n % E ranks hold one expert more
// (6 experts on 4 ranks: 2, 2, 1, 1), so every expert has exactly one owner
// per replica group and a rank's experts are a contiguous id range.
#include <cstdint>
#include <string>
#include <vector>

namespace dsk::dist {

class ExpertSharding {
 public:
  ExpertSharding(int64_t num_experts, int num_shards);

  int64_t num_experts() const { return num_experts_; }
  int num_shards() const { return num_shards_; }
  int owner(int64_t expert) const;
  int64_t first_expert(int shard) const;
  int64_t num_local(int shard) const;
  // Experts per shard, in shard order.
  std::vector<int64_t> counts() const;
  // "experts 0-3", "expert 4" or "no experts".
  std::string describe_shard(int shard) const;
  // "rank 0: experts 0-3; rank 1: experts 4-7" (ranks of the expert group).
  std::string describe() const;

 private:
  int64_t num_experts_;
  int num_shards_;
};

}  // namespace dsk::dist
