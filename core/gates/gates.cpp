// DSelect-k (Hazimeh et al., NeurIPS 2021, arXiv 2106.03760), Top-k (Shazeer
// et al. 2017) and softmax gates, all T tasks in one batched computation.
// docs/gates.md states the math and the choices made here.
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/gates/gate.h"
#include "core/gates/gates_impl.h"
#include "core/gates/smooth_step.h"
// The generated header's path depends on how protobuf_generate resolves the
// .proto's directory; accept both layouts.
#include "core/proto/config.pb.h"

namespace dsk::core {

namespace {

// Keyed by the name the model will give the parameter ("gate." + local name)
// so that init does not depend on which rank or object creates the gate.
at::Tensor init_parameter(uint64_t seed, const std::string& name, at::IntArrayRef shape,
                          double bound, at::ScalarType dtype) {
  at::Generator gen = make_generator(seed, "gate." + name);
  return uniform_parameter(shape, bound, gen, dtype);
}

// x [B, p], weight [T, o, p], bias [T, o] -> [T, B, o] with a single matmul
// against the [T*o, p] view, so the task count never becomes a loop.
at::Tensor batched_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const int64_t tasks = weight.size(0);
  const int64_t out = weight.size(1);
  at::Tensor y = at::addmm(bias.reshape({tasks * out}), x,
                           weight.reshape({tasks * out, weight.size(2)}).t());
  return y.view({x.size(0), tasks, out}).permute({1, 0, 2});
}

at::Tensor to_gate_dtype(const at::Tensor& x, int64_t input_dim, at::ScalarType dtype) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == input_dim, "gate: expected x of shape [B, ",
              input_dim, "], got ", x.sizes());
  return x.to(dtype);
}

// Static gates still report [T, B, n]; without an x there is one row.
int64_t batch_of(const at::Tensor& x) {
  return x.defined() && x.dim() >= 1 ? x.size(0) : 1;
}

bool is_power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// A selector whose reachable mass is below this would give 1/s (and 1/s^2 in
// the backward) that overflows, float32 first; there it contributes 1/kTiny
// and no gradient. Such a selector sits on an unreachable code with every
// z saturated, where the exact gradient is 0 anyway.
constexpr double kPenaltyFloor = 1e-12;

}  // namespace

at::Tensor smooth_step(const at::Tensor& t, double gamma) {
  const double half = gamma / 2.0;
  // The cubic is evaluated on the clamped argument: an unclamped t^3 can
  // overflow for huge |t|, and at::where's backward would then form 0 * inf.
  at::Tensor tc = t.clamp(-half, half);
  at::Tensor cubic = tc * (3.0 / (2.0 * gamma) - (2.0 / (gamma * gamma * gamma)) * tc * tc) + 0.5;
  at::Tensor zero = at::zeros_like(t);
  at::Tensor one = at::ones_like(t);
  return at::where(t <= -half, zero, at::where(t >= half, one, cubic));
}

int64_t dselect_k_num_bits(int64_t num_experts) {
  int64_t m = 0;
  while ((int64_t{1} << m) < num_experts) ++m;
  return m;
}

at::Tensor dselect_k_codes(int64_t num_experts) {
  const int64_t m = dselect_k_num_bits(num_experts);
  at::Tensor codes = at::empty({num_experts, m}, at::TensorOptions().dtype(at::kBool));
  auto acc = codes.accessor<bool, 2>();
  for (int64_t i = 0; i < num_experts; ++i)
    for (int64_t j = 0; j < m; ++j) acc[i][j] = ((i >> (m - 1 - j)) & 1) != 0;
  return codes;
}

// ---------------------------------------------------------------- DSelect-k

DSelectKGate::DSelectKGate(const GateShape& shape, int64_t k, double gamma, bool per_example,
                           uint64_t seed, at::ScalarType dtype)
    : num_tasks_(shape.num_tasks),
      num_experts_(shape.num_experts),
      input_dim_(shape.input_dim),
      k_(k),
      num_bits_(dselect_k_num_bits(shape.num_experts)),
      gamma_(gamma),
      per_example_(per_example),
      dtype_(dtype),
      codes_(dselect_k_codes(shape.num_experts)) {
  TORCH_CHECK(num_tasks_ >= 1 && num_experts_ >= 1 && k_ >= 1 && gamma_ > 0,
              "DSelectKGate: invalid shape or options");
  const int64_t T = num_tasks_, m = num_bits_, p = input_dim_;
  const double z_bound = gamma_ / 100.0;  // PAPER.md: nothing saturated at init
  const double alpha_bound = 0.05;
  if (per_example_) {
    TORCH_CHECK(p >= 1, "DSelectKGate: input_dim must be >= 1");
    z_weight_ = init_parameter(seed, "z_weight", {T, k_ * m, p}, z_bound, dtype_);
    z_bias_ = init_parameter(seed, "z_bias", {T, k_ * m}, z_bound, dtype_);
    alpha_weight_ = init_parameter(seed, "alpha_weight", {T, k_, p}, alpha_bound, dtype_);
    alpha_bias_ = init_parameter(seed, "alpha_bias", {T, k_}, alpha_bound, dtype_);
  } else {
    z_ = init_parameter(seed, "z", {T, k_, m}, z_bound, dtype_);
    alpha_ = init_parameter(seed, "alpha", {T, k_}, alpha_bound, dtype_);
  }
}

NamedTensors DSelectKGate::parameters() const {
  if (per_example_)
    return {{"z_weight", z_weight_},
            {"z_bias", z_bias_},
            {"alpha_weight", alpha_weight_},
            {"alpha_bias", alpha_bias_}};
  return {{"z", z_}, {"alpha", alpha_}};
}

GateOutput DSelectKGate::forward(const at::Tensor& x, bool /*training*/) {
  const int64_t T = num_tasks_, n = num_experts_, m = num_bits_;
  // z: [..., k, m], alpha: [..., k] with leading [T, B] or [T].
  at::Tensor z, alpha;
  int64_t batch = 1;
  if (per_example_) {
    at::Tensor xd = to_gate_dtype(x, input_dim_, dtype_);
    batch = xd.size(0);
    alpha = batched_linear(xd, alpha_weight_, alpha_bias_);  // [T, B, k]
    if (m > 0) z = batched_linear(xd, z_weight_, z_bias_).reshape({T, batch, k_, m});
  } else {
    batch = batch_of(x);
    alpha = alpha_;
    z = z_;
  }
  at::Tensor mix = at::softmax(alpha, -1);  // [..., k]

  at::Tensor selectors;  // r(z^(l)): [..., k, n]
  at::Tensor weights;    // q: [..., n]
  if (m == 0) {
    // One expert: r = 1 for every selector, q exactly 1. The 0 * mix term
    // keeps alpha in the graph so its gradient is a defined 0, not missing.
    std::vector<int64_t> sel_shape(mix.sizes().begin(), mix.sizes().end());
    sel_shape.push_back(1);
    selectors = at::ones(sel_shape, mix.options());
    weights = mix.sum(-1, /*keepdim=*/true) * 0.0 + 1.0;
  } else {
    at::Tensor s = smooth_step(z, gamma_).unsqueeze(-2);  // [..., k, 1, m]
    // Per-bit factor of each reachable code: [..., k, n, m].
    at::Tensor factors = at::where(codes_.to(s.device()), s, 1.0 - s);
    // A product over the m bits as a chain of multiplies: unlike prod(),
    // its backward is exact when a factor is exactly 0 and needs no
    // data-dependent branch.
    selectors = factors.select(-1, 0);
    for (int64_t j = 1; j < m; ++j) selectors = selectors * factors.select(-1, j);
    weights = (mix.unsqueeze(-1) * selectors).sum(-2);
  }

  GateOutput out;
  out.per_example = per_example_;
  out.weights = per_example_ ? weights : weights.unsqueeze(1).expand({T, batch, n});
  out.selector_outputs = selectors;
  out.entropy_sum = (-selectors * at::log(selectors + 1e-6)).sum();
  if (is_power_of_two(n)) {
    out.nonpow2_penalty_sum = at::zeros({}, weights.options());
  } else {
    at::Tensor reachable = selectors.sum(-1);
    at::Tensor floor = at::full_like(reachable, kPenaltyFloor);
    out.nonpow2_penalty_sum =
        at::reciprocal(at::where(reachable < kPenaltyFloor, floor, reachable)).sum();
  }
  return out;
}

// ------------------------------------------------------------ Top-k, softmax

LogitsGate::LogitsGate(const GateShape& shape, int64_t top_k, bool per_example, uint64_t seed,
                       at::ScalarType dtype)
    : num_tasks_(shape.num_tasks),
      num_experts_(shape.num_experts),
      input_dim_(shape.input_dim),
      top_k_(top_k),
      per_example_(per_example),
      dtype_(dtype) {
  TORCH_CHECK(num_tasks_ >= 1 && num_experts_ >= 1 && top_k_ >= 0 && top_k_ <= num_experts_,
              "LogitsGate: invalid shape or options");
  const int64_t T = num_tasks_, n = num_experts_, p = input_dim_;
  if (per_example_) {
    TORCH_CHECK(p >= 1, "LogitsGate: input_dim must be >= 1");
    // The bound of a default Linear(p, n): weight and bias U(-1/sqrt(p), 1/sqrt(p)).
    const double bound = 1.0 / std::sqrt(static_cast<double>(p));
    weight_ = init_parameter(seed, "weight", {T, n, p}, bound, dtype_);
    bias_ = init_parameter(seed, "bias", {T, n}, bound, dtype_);
  } else {
    // Small and random rather than 0, so Top-k starts without ties.
    logits_ = init_parameter(seed, "logits", {T, n}, 0.05, dtype_);
  }
}

NamedTensors LogitsGate::parameters() const {
  if (per_example_) return {{"weight", weight_}, {"bias", bias_}};
  return {{"logits", logits_}};
}

GateOutput LogitsGate::forward(const at::Tensor& x, bool /*training*/) {
  const int64_t T = num_tasks_, n = num_experts_;
  at::Tensor logits;
  int64_t batch = 1;
  if (per_example_) {
    at::Tensor xd = to_gate_dtype(x, input_dim_, dtype_);
    batch = xd.size(0);
    logits = batched_linear(xd, weight_, bias_);  // [T, B, n]
  } else {
    batch = batch_of(x);
    logits = logits_;  // [T, n]
  }
  at::Tensor weights;
  if (top_k_ == 0 || top_k_ == n) {
    weights = at::softmax(logits, -1);
  } else {
    auto [values, indices] = at::topk(logits, top_k_, -1, /*largest=*/true, /*sorted=*/false);
    // Scattered into zeros: the dropped experts are exactly 0.0.
    weights = at::zeros_like(logits).scatter(-1, indices, at::softmax(values, -1));
  }
  GateOutput out;
  out.per_example = per_example_;
  out.weights = per_example_ ? weights : weights.unsqueeze(1).expand({T, batch, n});
  out.entropy_sum = at::zeros({}, weights.options());
  out.nonpow2_penalty_sum = at::zeros({}, weights.options());
  return out;
}

// ---------------------------------------------------------------- make_gate

namespace {
template <typename V>
[[noreturn]] void config_error(const std::string& field, V value, const std::string& what) {
  std::ostringstream msg;
  msg << "config: " << field << " = " << value << " " << what;
  throw UsageError(msg.str());
}
}  // namespace

std::unique_ptr<Gate> make_gate(const proto::GateConfig& config, const GateShape& shape,
                                uint64_t seed, at::ScalarType dtype) {
  if (shape.num_experts < 1)
    config_error("model.num_experts", shape.num_experts, "must be >= 1");
  TORCH_CHECK(shape.num_tasks >= 1, "make_gate: num_tasks must be >= 1, got ", shape.num_tasks);
  if (config.per_example())
    TORCH_CHECK(shape.input_dim >= 1, "make_gate: input_dim must be >= 1, got ", shape.input_dim);
  const bool uses_k = config.type() == proto::GateConfig::DSELECT_K ||
                      config.type() == proto::GateConfig::TOP_K;
  if (uses_k) {
    if (config.k() < 1) config_error("model.gate.k", config.k(), "must be >= 1");
    if (config.k() > shape.num_experts) {
      std::ostringstream what;
      what << "exceeds model.num_experts = " << shape.num_experts;
      config_error("model.gate.k", config.k(), what.str());
    }
  }
  switch (config.type()) {
    case proto::GateConfig::DSELECT_K:
      // !(x > 0) also rejects NaN.
      if (!(config.gamma() > 0)) config_error("model.gate.gamma", config.gamma(), "must be > 0");
      if (!(config.entropy_reg() >= 0))
        config_error("model.gate.entropy_reg", config.entropy_reg(), "must be >= 0");
      return std::make_unique<DSelectKGate>(shape, config.k(), config.gamma(),
                                            config.per_example(), seed, dtype);
    case proto::GateConfig::TOP_K:
      return std::make_unique<TopKGate>(shape, config.k(), config.per_example(), seed, dtype);
    case proto::GateConfig::SOFTMAX:
      return std::make_unique<SoftmaxGate>(shape, config.per_example(), seed, dtype);
  }
  throw UsageError("config: model.gate.type is not a known gate type");
}

}  // namespace dsk::core
