#pragma once
// In-memory multi-task data sets. Everything is built deterministically from
// the config (and its seeds), identically on every rank, so a rank can index
// any global sample without communication.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace dsk::proto {
class DataConfig;
}

namespace dsk::core {

enum class TaskKind { kClassification, kRegression };

struct Dataset {
  // [N, C, H, W] float32 images (Multi-Fashion-MNIST: [N, 1, 36, 36] in [0, 1])
  // or [N, p] float32 features (synthetic).
  at::Tensor inputs;
  // [N, T]: int64 class ids (classification) or float32 targets (regression).
  at::Tensor targets;
  TaskKind kind = TaskKind::kClassification;
  int64_t num_classes = 0;  // per task, classification only
  // Synthetic only: cluster of each task (tasks in a cluster share a target).
  std::vector<int64_t> task_cluster;

  int64_t size() const { return inputs.defined() ? inputs.size(0) : 0; }
  int64_t num_tasks() const { return targets.defined() ? targets.size(1) : 0; }
};

struct DataSplits {
  Dataset train;
  Dataset test;
};

// Builds the data set the config names. Throws UsageError naming the file
// (missing, truncated, bad magic) or the config field.
DataSplits load_data(const proto::DataConfig& config);

}  // namespace dsk::core
