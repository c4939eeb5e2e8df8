#pragma once
// Expert networks and the per-task towers.
//
// ExpertNet: optional conv stages (conv5x5 -> ReLU -> maxpool2 each, for
// image inputs), then fully connected layers with ReLU between them (none
// after the last: the towers read the raw mixture). With no conv stages the
// input is flattened, making it an MLP. Initialisation follows PyTorch's
// nn.Linear/nn.Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights
// and biases, drawn from generators keyed by the parameter's global name.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/params.h"

namespace dsk::core {

struct ExpertSpec {
  std::vector<int64_t> input_shape;    // per example: {C, H, W} or {p}
  std::vector<int64_t> conv_channels;  // empty: MLP
  std::vector<int64_t> hidden;         // FC widths; the last is the output dim
};

class ExpertNet {
 public:
  // `name` is the global identity prefix, e.g. "experts.5.".
  ExpertNet(const ExpertSpec& spec, uint64_t seed, const std::string& name);
  // x: [rows, ...input_shape] -> [rows, output_dim()].
  at::Tensor forward(const at::Tensor& x) const;
  int64_t output_dim() const { return output_dim_; }
  // Full names ("experts.5.fc0.weight").
  NamedTensors parameters() const;

 private:
  struct Layer {
    at::Tensor weight, bias;
  };
  std::vector<Layer> convs_;
  std::vector<Layer> fcs_;
  std::string name_;
  int64_t output_dim_ = 0;
};

// T towers evaluated together: layer l holds [T, in, out] weights, so all
// tasks' towers are one bmm per layer. ReLU between layers, none after the
// last (logits or regression outputs).
class TaskTowers {
 public:
  TaskTowers(int64_t num_tasks, int64_t input_dim, const std::vector<int64_t>& hidden, int64_t output_dim,
             uint64_t seed, const std::string& name = "towers.");
  // x: [T, B, input_dim] -> [T, B, output_dim].
  at::Tensor forward(const at::Tensor& x) const;
  NamedTensors parameters() const;

 private:
  std::vector<at::Tensor> weights_;  // [T, in, out]
  std::vector<at::Tensor> biases_;   // [T, 1, out]
  std::string name_;
};

}  // namespace dsk::core
