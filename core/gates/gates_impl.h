#pragma once
// The concrete gates behind make_gate, visible so tests (and anything that
// needs the exact parameterisation) can construct them directly. Every gate
// holds the parameters of all T tasks with a leading T dimension and
// evaluates them with one batched computation.
#include <ATen/ATen.h>

#include <cstdint>

#include "core/gates/gate.h"

namespace dsk::core {

// m = ceil(log2 n); 0 for n = 1.
int64_t dselect_k_num_bits(int64_t num_experts);

// [n, m] bool: entry (i, j) is bit j of expert i's code, MSB first,
// i.e. (i >> (m-1-j)) & 1 (the authors' reference order).
at::Tensor dselect_k_codes(int64_t num_experts);

// DSelect-k. Parameters (names relative to the gate):
//   per-example: z_weight [T, k*m, p], z_bias [T, k*m],
//                alpha_weight [T, k, p], alpha_bias [T, k]
//                (z[t, b, l, j] = (x z_weight[t]^T + z_bias[t])[b, l*m + j])
//   static:      z [T, k, m], alpha [T, k]
class DSelectKGate : public Gate {
 public:
  DSelectKGate(const GateShape& shape, int64_t k, double gamma, bool per_example,
               uint64_t seed, at::ScalarType dtype);
  GateOutput forward(const at::Tensor& x, bool training) override;
  NamedTensors parameters() const override;
  int64_t num_tasks() const override { return num_tasks_; }
  int64_t num_experts() const override { return num_experts_; }
  int64_t k() const { return k_; }
  int64_t num_bits() const { return num_bits_; }
  double gamma() const { return gamma_; }

 private:
  int64_t num_tasks_;
  int64_t num_experts_;
  int64_t input_dim_;
  int64_t k_;
  int64_t num_bits_;
  double gamma_;
  bool per_example_;
  at::ScalarType dtype_;
  at::Tensor codes_;  // [n, m] bool
  at::Tensor z_weight_, z_bias_, alpha_weight_, alpha_bias_;  // per-example
  at::Tensor z_, alpha_;                                       // static
};

// Softmax over logits, either all of them (SoftmaxGate, dense MMoE) or only the
// k largest per (task, example) with the rest exactly 0 (TopKGate, Shazeer et
// al. 2017, without the noise term). Parameters:
//   per-example: weight [T, n, p], bias [T, n]  (logits = x weight[t]^T + bias[t])
//   static:      logits [T, n]
class LogitsGate : public Gate {
 public:
  // top_k = 0: dense softmax.
  LogitsGate(const GateShape& shape, int64_t top_k, bool per_example, uint64_t seed,
             at::ScalarType dtype);
  GateOutput forward(const at::Tensor& x, bool training) override;
  NamedTensors parameters() const override;
  int64_t num_tasks() const override { return num_tasks_; }
  int64_t num_experts() const override { return num_experts_; }

 private:
  int64_t num_tasks_;
  int64_t num_experts_;
  int64_t input_dim_;
  int64_t top_k_;
  bool per_example_;
  at::ScalarType dtype_;
  at::Tensor weight_, bias_;  // per-example
  at::Tensor logits_;         // static
};

class TopKGate : public LogitsGate {
 public:
  TopKGate(const GateShape& shape, int64_t k, bool per_example, uint64_t seed,
           at::ScalarType dtype)
      : LogitsGate(shape, k, per_example, seed, dtype) {}
};

class SoftmaxGate : public LogitsGate {
 public:
  SoftmaxGate(const GateShape& shape, bool per_example, uint64_t seed, at::ScalarType dtype)
      : LogitsGate(shape, 0, per_example, seed, dtype) {}
};

}  // namespace dsk::core
