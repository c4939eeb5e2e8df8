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
  // [N, C, H, W] uint8 images (Multi-Fashion-MNIST: [N, 1, 36, 36], kept as
  // bytes: a quarter of the memory on every rank) or [N, p] float32
  // features (synthetic). Read model inputs through input_rows().
  at::Tensor inputs;
  // [N, T]: int64 class ids (classification) or float32 targets (regression).
  at::Tensor targets;
  TaskKind kind = TaskKind::kClassification;
  int64_t num_classes = 0;  // per task, classification only
  // Synthetic only: cluster of each task (tasks in a cluster share a target).
  std::vector<int64_t> task_cluster;

  int64_t size() const { return inputs.defined() ? inputs.size(0) : 0; }
  // float32 model inputs of the rows `index` (int64): uint8 images are
  // scaled to [0, 1] here, by the same /255 as a float data set would hold.
  at::Tensor input_rows(const at::Tensor& index) const { return as_model_input(inputs.index_select(0, index)); }
  at::Tensor input_slice(int64_t first, int64_t count) const { return as_model_input(inputs.narrow(0, first, count)); }
  static at::Tensor as_model_input(const at::Tensor& raw) {
    return raw.scalar_type() == at::kByte ? raw.to(at::kFloat).div_(255.0) : raw;
  }
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
