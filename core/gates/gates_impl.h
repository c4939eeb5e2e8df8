#pragma once
// The concrete gates behind make_gate, visible so tests (and anything that
// needs the exact parameterisation) can construct them directly. Every gate
// holds the parameters of all T tasks with a leading T dimension and
// evaluates them with one batched computation.
#include <ATen/ATen.h>

#include <cstdint>

#include "core/gates/gate.h"
#include "core/gates/regularizers.h"

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
  at::Tensor z_weight_, z_bias_, alpha_weight_, alpha_bias_;  // per-example
  at::Tensor z_, alpha_;                                       // static
};

// Softmax over logits, either all of them (SoftmaxGate, dense MMoE) or only the
// k largest per (task, example) with the rest exactly 0 (TopKGate, Shazeer et
// al. 2017). Parameters:
//   per-example: weight [T, n, p], bias [T, n]  (logits = x weight[t]^T + bias[t])
//   static:      logits [T, n]
// Noisy Top-k adds, in training only, standard-normal noise times
// softplus(raw) + 1e-2 to the logits before the top-k (tensor2tensor's
// noise_epsilon), raw = x noise_weight[t]^T + noise_bias[t]
// (noise_weight [T, n, p], noise_bias [T, n], initialised to 0 as in the
// paper) or, static, a trainable noise_logits [T, n] (init 0).
class LogitsGate : public Gate {
 public:
  // top_k = 0: dense softmax.
  LogitsGate(const GateShape& shape, int64_t top_k, bool per_example, uint64_t seed,
             at::ScalarType dtype, bool noisy = false, LoadBalance balance = LoadBalance::kNone);
  GateOutput forward(const at::Tensor& x, bool training) override;
  NamedTensors parameters() const override;
  int64_t num_tasks() const override { return num_tasks_; }
  int64_t num_experts() const override { return num_experts_; }
  void set_noise_seed(uint64_t seed) override;
  bool noisy() const { return noisy_; }

 private:
  int64_t num_tasks_;
  int64_t num_experts_;
  int64_t input_dim_;
  int64_t top_k_;
  bool per_example_;
  at::ScalarType dtype_;
  bool noisy_;
  LoadBalance balance_;
  at::Generator noise_gen_;
  at::Tensor weight_, bias_;              // per-example
  at::Tensor logits_;                     // static
  at::Tensor noise_weight_, noise_bias_;  // noisy, per-example
  at::Tensor noise_logits_;               // noisy, static
};

class TopKGate : public LogitsGate {
 public:
  TopKGate(const GateShape& shape, int64_t k, bool per_example, uint64_t seed,
           at::ScalarType dtype, bool noisy = false, LoadBalance balance = LoadBalance::kNone)
      : LogitsGate(shape, k, per_example, seed, dtype, noisy, balance) {}
};

class SoftmaxGate : public LogitsGate {
 public:
  SoftmaxGate(const GateShape& shape, bool per_example, uint64_t seed, at::ScalarType dtype)
      : LogitsGate(shape, 0, per_example, seed, dtype) {}
};

}  // namespace dsk::core
