#pragma once
// Synthetic multi-task regression with clustered tasks, after the MMoE
// generator (Ma et al. 2018) as used by DSelect-k (Hazimeh et al. 2021):
// tasks in one cluster share a target function up to a small perturbation of
// their direction, tasks in different clusters are unrelated. docs/data.md
// gives the formula.
#include <cstdint>

#include "core/data/dataset.h"

namespace dsk::proto {
class SyntheticConfig;
}

namespace dsk::core {

// Sinusoid terms per target function (MMoE uses m = 10).
inline constexpr int64_t kSyntheticTerms = 10;

// Throws UsageError naming the first bad field of data.synthetic.
void validate_synthetic(const proto::SyntheticConfig& config);

// Train and test share the functions and differ only in x and noise; all of
// it follows from `seed`. inputs float32 [N, p], targets float32 [N, T],
// task_cluster[t] = t % C.
DataSplits make_synthetic(const proto::SyntheticConfig& config, uint64_t seed);

}  // namespace dsk::core
