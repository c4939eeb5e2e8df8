#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/core/gate_test_util.h"
#include "core/error.h"
#include "core/gates/gate.h"
#include "core/gates/gates_impl.h"
#include "core/gates/smooth_step.h"
#include "core/proto/config.pb.h"

namespace dsk::core {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::string golden_dir() {
  if (const char* env = std::getenv("DSK_GOLDEN_DIR"); env != nullptr && *env != '\0') return env;
  if (fs::is_directory(DSK_GOLDEN_DEFAULT_DIR)) return DSK_GOLDEN_DEFAULT_DIR;
  return std::string(DSK_SOURCE_DIR) + "/tests/golden/gates";
}

void flatten(const json& j, std::vector<double>& out) {
  if (j.is_array()) {
    for (const auto& e : j) flatten(e, out);
  } else {
    out.push_back(j.get<double>());
  }
}

std::vector<double> json_values(const json& j) {
  std::vector<double> out;
  flatten(j, out);
  return out;
}

// Nested JSON lists carry no shape for empty parts ([[]] vs []), so values
// are taken flat and given the shape of the tensor they are compared with.
at::Tensor json_tensor_like(const json& j, const at::Tensor& like) {
  std::vector<double> v = json_values(j);
  EXPECT_EQ(static_cast<int64_t>(v.size()), like.numel());
  return at::tensor(v, at::kDouble).reshape(like.sizes());
}

at::Tensor json_tensor(const json& j, at::IntArrayRef shape) {
  std::vector<double> v = json_values(j);
  return at::tensor(v, at::kDouble).reshape(shape);
}

bool close(double a, double b, double tol) { return std::abs(a - b) <= tol * (1.0 + std::abs(b)); }

// Every entry within tol; expected exact zeros must be exact in `actual`.
void expect_matches(const at::Tensor& actual, const json& expected, double tol,
                    const std::string& what, bool exact_zeros = false) {
  std::vector<double> e = json_values(expected);
  at::Tensor a = actual.detach().to(at::kDouble).contiguous().reshape({-1});
  ASSERT_EQ(a.numel(), static_cast<int64_t>(e.size())) << what;
  const double* ap = a.data_ptr<double>();
  int bad = 0;
  for (size_t i = 0; i < e.size(); ++i) {
    if (!close(ap[i], e[i], tol) && bad++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: got " << ap[i] << ", want " << e[i];
    if (exact_zeros && e[i] == 0.0 && ap[i] != 0.0 && bad++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: expected exact 0.0, got " << ap[i];
  }
}

proto::GateConfig gate_config(proto::GateConfig::Type type, int64_t k, bool per_example,
                              double gamma = 1.0) {
  proto::GateConfig c;
  c.set_type(type);
  c.set_k(static_cast<int32_t>(k));
  c.set_per_example(per_example);
  c.set_gamma(gamma);
  return c;
}

at::Tensor param(const Gate& gate, const std::string& name) { return test_util::gate_param(gate, name); }

at::Tensor grad_or_zeros(const at::Tensor& t) {
  return t.grad().defined() ? t.grad() : at::zeros_like(t);
}

// ---------------------------------------------------------------- golden

// Failures recorded so far in the running test, to count passing cases.
int failed_parts() {
  const ::testing::TestResult* result =
      ::testing::UnitTest::GetInstance()->current_test_info()->result();
  int failed = 0;
  for (int i = 0; i < result->total_part_count(); ++i)
    failed += result->GetTestPartResult(i).failed() ? 1 : 0;
  return failed;
}

TEST(GateGolden, MatchesReferenceVectors) {
  const std::string dir = golden_dir();
  std::vector<fs::path> files;
  if (fs::is_directory(dir))
    for (const auto& entry : fs::directory_iterator(dir))
      if (entry.path().extension() == ".json") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  ASSERT_FALSE(files.empty()) << "no golden case in " << dir;

  const double tol = 1e-9;
  int passed = 0;
  for (const auto& file : files) {
    SCOPED_TRACE(file.filename().string());
    const int failures_before = failed_parts();
    std::ifstream in(file);
    json d = json::parse(in);
    const std::string kind = d.at("gate");
    const bool per_example = d.at("variant") == "per_example";
    const int64_t n = d.at("num_experts");
    const bool dselect = kind == "dselect_k";
    proto::GateConfig::Type type = dselect            ? proto::GateConfig::DSELECT_K
                                   : kind == "top_k" ? proto::GateConfig::TOP_K
                                                     : proto::GateConfig::SOFTMAX;
    ASSERT_TRUE(dselect || kind == "top_k" || kind == "softmax") << kind;
    const int64_t k = d.contains("k") && d["k"].get<int64_t>() > 0 ? d["k"].get<int64_t>() : 1;
    const double gamma = d.contains("gamma") ? d["gamma"].get<double>() : 1.0;
    if (dselect) {
      ASSERT_EQ(d.at("bit_order"), "msb_first");
      ASSERT_EQ(d.at("num_bits").get<int64_t>(), dselect_k_num_bits(n));
    }

    at::Tensor x;
    int64_t p = 1;
    if (per_example) {
      const json& jx = d.at("x");
      p = static_cast<int64_t>(jx.at(0).size());
      x = json_tensor(jx, {static_cast<int64_t>(jx.size()), p}).requires_grad_(true);
    } else {
      x = at::zeros({1, 1}, at::kDouble);  // static: one row, x unused
    }
    auto gate = make_gate(gate_config(type, k, per_example, gamma), GateShape{1, n, p}, 5,
                          at::kDouble);
    {
      at::NoGradGuard no_grad;
      for (const auto& nt : gate->parameters()) {
        ASSERT_TRUE(d.contains(nt.name)) << "case lacks parameter " << nt.name;
        at::Tensor slot = nt.tensor[0];
        slot.copy_(json_tensor_like(d[nt.name], slot));
      }
    }

    GateOutput out = gate->forward(x, /*training=*/false);
    const json& ex = d.at("expected");
    at::Tensor weights = per_example ? out.weights[0] : out.weights[0][0];
    expect_matches(weights, ex.at("weights"), tol, "weights", /*exact_zeros=*/true);
    if (dselect) {
      expect_matches(out.selector_outputs[0], ex.at("selector_outputs"), tol, "selector_outputs");
      EXPECT_TRUE(close(out.entropy_sum.item<double>(), ex.at("entropy_sum"), tol));
      EXPECT_TRUE(close(out.nonpow2_penalty_sum.item<double>(), ex.at("nonpow2_penalty_sum"), tol))
          << out.nonpow2_penalty_sum.item<double>() << " vs " << ex.at("nonpow2_penalty_sum");
    }

    const json& jl = d.at("loss");
    at::Tensor upstream = json_tensor_like(jl.at("upstream"), weights);
    at::Tensor loss = (weights * upstream).sum();
    if (dselect)
      loss = loss + jl.at("entropy_coef").get<double>() * out.entropy_sum + out.nonpow2_penalty_sum;
    EXPECT_TRUE(close(loss.item<double>(), jl.at("value"), tol))
        << loss.item<double>() << " vs " << jl.at("value");
    loss.backward();
    for (const auto& [name, expected] : d.at("grads").items()) {
      at::Tensor g = name == "x" ? grad_or_zeros(x) : grad_or_zeros(param(*gate, name))[0];
      expect_matches(g, expected, tol, "grad " + name);
    }
    // float32, the training default: same parameters, about 1e-5.
    {
      auto g32 = make_gate(gate_config(type, k, per_example, gamma), GateShape{1, n, p}, 5);
      at::NoGradGuard no_grad;
      for (const auto& nt : g32->parameters()) nt.tensor.copy_(param(*gate, nt.name));
      at::Tensor w32 = g32->forward(x.detach().to(at::kFloat), false).weights[0];
      EXPECT_EQ(w32.scalar_type(), at::kFloat);
      expect_matches(per_example ? w32 : w32[0], ex.at("weights"), 1e-5, "float32 weights");
    }
    if (failed_parts() == failures_before) ++passed;
  }
  std::printf("%d cases passed (of %zu in %s)\n", passed, files.size(), dir.c_str());
  EXPECT_EQ(passed, static_cast<int>(files.size()));
}

// ------------------------------------------------------------ smooth-step

TEST(SmoothStep, ValuesAndDerivatives) {
  for (double gamma : {1.0, 0.5, 2.0}) {
    SCOPED_TRACE(gamma);
    const double h = gamma / 2;
    at::Tensor t = at::tensor(std::vector<double>{0.0, -h, h, -2 * h, 2 * h, -1e300, 1e300,
                                                  h * 1.0000001, 0.3 * h},
                              at::kDouble)
                       .requires_grad_(true);
    at::Tensor s = smooth_step(t, gamma);
    s.sum().backward();
    auto v = s.accessor<double, 1>();
    auto g = t.grad().accessor<double, 1>();
    EXPECT_DOUBLE_EQ(v[0], 0.5);
    EXPECT_DOUBLE_EQ(g[0], 3.0 / (2.0 * gamma));
    // Band edges: exactly 0 / 1, and S' = 0 (C1).
    EXPECT_EQ(v[1], 0.0);
    EXPECT_EQ(v[2], 1.0);
    EXPECT_EQ(g[1], 0.0);
    EXPECT_EQ(g[2], 0.0);
    // Outside the band, even where t^3 would overflow: exact values, exact 0 gradient.
    for (int i : {3, 5}) {
      EXPECT_EQ(v[i], 0.0);
      EXPECT_EQ(g[i], 0.0);
    }
    for (int i : {4, 6, 7}) {
      EXPECT_EQ(v[i], 1.0);
      EXPECT_EQ(g[i], 0.0);
    }
    // Inside: the cubic and its derivative.
    const double u = 0.3 * h;
    EXPECT_NEAR(v[8], -2 / std::pow(gamma, 3) * u * u * u + 3 / (2 * gamma) * u + 0.5, 1e-15);
    EXPECT_NEAR(g[8], -6 / std::pow(gamma, 3) * u * u + 3 / (2 * gamma), 1e-14);
  }
}

TEST(SmoothStep, NearTheEdgeTheDerivativeVanishes) {
  at::Tensor t = at::tensor(std::vector<double>{0.5 - 1e-6, -0.5 + 1e-6}).requires_grad_(true);
  smooth_step(t, 1.0).sum().backward();
  EXPECT_LT(t.grad().abs().max().item<double>(), 1e-5);
  EXPECT_FALSE(at::isnan(t.grad()).any().item<bool>());
}

// ------------------------------------------------------------ grad checks

enum class Regime { kInside, kSaturated, kMixed };

// Puts z inside the band, outside it, or a mix, away from the kinks at
// +-gamma/2 by more than the finite-difference step. Saturated bits keep the
// MSB negative so every selector lands on a reachable code (n > 2^(m-1)).
void set_test_parameters(Gate& gate, proto::GateConfig::Type type, double gamma, Regime regime,
                         std::mt19937& rng) {
  std::uniform_real_distribution<double> unit(-1.0, 1.0);
  at::NoGradGuard no_grad;
  for (const auto& nt : gate.parameters()) {
    at::Tensor t = nt.tensor;
    double* ptr = t.data_ptr<double>();
    const bool z_like = type == proto::GateConfig::DSELECT_K &&
                        (nt.name == "z" || nt.name == "z_bias");
    const int64_t m = type == proto::GateConfig::DSELECT_K
                          ? dselect_k_num_bits(gate.num_experts())
                          : 1;
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (nt.name == "z_weight") {
        ptr[i] = 0.02 * gamma * unit(rng);  // |x z_weight| <= 0.08 gamma with p = 4
      } else if (z_like) {
        const int64_t bit = i % m;
        bool saturate = regime == Regime::kSaturated || (regime == Regime::kMixed && unit(rng) > 0);
        if (saturate) {
          double mag = gamma * (0.7 + 0.8 * (unit(rng) + 1) / 2);
          double sign = bit == 0 ? -1.0 : (unit(rng) > 0 ? 1.0 : -1.0);
          ptr[i] = sign * mag;
        } else {
          ptr[i] = 0.3 * gamma * unit(rng);
        }
      } else {
        ptr[i] = unit(rng);
      }
    }
  }
}

double gate_loss(Gate& gate, const at::Tensor& x, const at::Tensor& upstream) {
  GateOutput out = gate.forward(x, false);
  at::Tensor loss =
      (out.weights * upstream).sum() + 0.3 * out.entropy_sum + out.nonpow2_penalty_sum;
  return loss.item<double>();
}

// Central differences against autograd for every parameter and x, on up to
// `max_entries` random entries per tensor.
// Returns the worst |fd - autograd| / (1 + |autograd|).
double check_gradients(Gate& gate, at::Tensor x, bool per_example, std::mt19937& rng,
                       int max_entries = 48) {
  at::Tensor upstream = at::randn({gate.num_tasks(), x.size(0), gate.num_experts()},
                                  at::TensorOptions().dtype(at::kDouble));
  GateOutput out = gate.forward(x, false);
  at::Tensor loss =
      (out.weights * upstream).sum() + 0.3 * out.entropy_sum + out.nonpow2_penalty_sum;
  loss.backward();

  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& nt : gate.parameters()) tensors.emplace_back(nt.name, nt.tensor);
  if (per_example) tensors.emplace_back("x", x);
  const double h = 1e-6;
  double worst = 0;
  for (const auto& [name, t] : tensors) {
    at::Tensor analytic = grad_or_zeros(t).contiguous();
    EXPECT_FALSE(at::isnan(analytic).any().item<bool>()) << name;
    const double* ap = analytic.data_ptr<double>();
    std::vector<int64_t> idx(t.numel());
    for (int64_t i = 0; i < t.numel(); ++i) idx[i] = i;
    std::shuffle(idx.begin(), idx.end(), rng);
    if (static_cast<int64_t>(idx.size()) > max_entries) idx.resize(max_entries);
    at::NoGradGuard no_grad;
    double* ptr = t.data_ptr<double>();
    for (int64_t i : idx) {
      const double orig = ptr[i];
      ptr[i] = orig + h;
      const double up = gate_loss(gate, x, upstream);
      ptr[i] = orig - h;
      const double down = gate_loss(gate, x, upstream);
      ptr[i] = orig;
      const double fd = (up - down) / (2 * h);
      worst = std::max(worst, std::abs(fd - ap[i]) / (1 + std::abs(ap[i])));
      EXPECT_TRUE(close(fd, ap[i], 1e-5)) << name << "[" << i << "]: fd " << fd << " autograd "
                                          << ap[i];
    }
  }
  return worst;
}

struct GradCase {
  proto::GateConfig::Type type;
  int64_t n;
  int64_t k;
};

void run_grad_checks(const std::vector<GradCase>& cases, const std::vector<Regime>& regimes) {
  std::mt19937 rng(1234);
  at::manual_seed(99);
  const int64_t T = 3, B = 3, p = 4;
  double worst = 0;
  for (const auto& c : cases)
    for (bool per_example : {false, true})
      for (Regime regime : regimes)
        for (double gamma : {1.0, 0.5}) {
          SCOPED_TRACE("n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
                       " per_example=" + std::to_string(per_example) +
                       " regime=" + std::to_string(static_cast<int>(regime)) +
                       " gamma=" + std::to_string(gamma));
          auto gate = make_gate(gate_config(c.type, c.k, per_example, gamma), GateShape{T, c.n, p},
                                3, at::kDouble);
          set_test_parameters(*gate, c.type, gamma, regime, rng);
          at::Tensor x = (at::rand({B, p}, at::kDouble) * 2 - 1).requires_grad_(per_example);
          worst = std::max(worst, check_gradients(*gate, x, per_example, rng));
        }
  std::printf("worst finite-difference relative error %.3g\n", worst);
}

TEST(GateGradCheck, DSelectK) {
  run_grad_checks({{proto::GateConfig::DSELECT_K, 1, 1},
                   {proto::GateConfig::DSELECT_K, 5, 2},
                   {proto::GateConfig::DSELECT_K, 6, 3},
                   {proto::GateConfig::DSELECT_K, 8, 2},
                   {proto::GateConfig::DSELECT_K, 128, 4}},
                  {Regime::kInside, Regime::kSaturated, Regime::kMixed});
}

TEST(GateGradCheck, TopK) {
  run_grad_checks({{proto::GateConfig::TOP_K, 1, 1},
                   {proto::GateConfig::TOP_K, 5, 2},
                   {proto::GateConfig::TOP_K, 6, 3},
                   {proto::GateConfig::TOP_K, 8, 2},
                   {proto::GateConfig::TOP_K, 128, 4}},
                  {Regime::kInside});
}

TEST(GateGradCheck, Softmax) {
  run_grad_checks({{proto::GateConfig::SOFTMAX, 1, 1},
                   {proto::GateConfig::SOFTMAX, 5, 1},
                   {proto::GateConfig::SOFTMAX, 6, 1},
                   {proto::GateConfig::SOFTMAX, 8, 1},
                   {proto::GateConfig::SOFTMAX, 128, 1}},
                  {Regime::kInside});
}

// ------------------------------------------------- gamma, penalty, sparsity

TEST(GateGamma, ChangesTheForward) {
  std::vector<at::Tensor> weights;
  for (double gamma : {1.0, 2.0}) {
    auto gate = make_gate(gate_config(proto::GateConfig::DSELECT_K, 2, false, gamma),
                          GateShape{1, 8, 1}, 1, at::kDouble);
    {
      at::NoGradGuard no_grad;
      param(*gate, "z").copy_(at::tensor(std::vector<double>{0.7, -0.2, 0.3, 0.1, -0.6, 0.4})
                                  .reshape({1, 2, 3}));
      param(*gate, "alpha").copy_(at::tensor(std::vector<double>{0.2, -0.1}).reshape({1, 2}));
    }
    weights.push_back(gate->forward(at::zeros({1, 1}, at::kDouble), false).weights);
  }
  EXPECT_GT((weights[0] - weights[1]).abs().max().item<double>(), 1e-3);

  // The same z = 0.7 is saturated for gamma = 1 but not for gamma = 2.
  at::Tensor z = at::full({1}, 0.7, at::kDouble);
  EXPECT_EQ(smooth_step(z, 1.0).item<double>(), 1.0);
  EXPECT_LT(smooth_step(z, 2.0).item<double>(), 1.0);
}

TEST(GatePenalty, NonPowerOfTwoPenaltyAndItsGradient) {
  auto gate = make_gate(gate_config(proto::GateConfig::DSELECT_K, 2, false, 1.0),
                        GateShape{1, 6, 1}, 1, at::kDouble);
  at::Tensor z = param(*gate, "z");
  at::Tensor x = at::zeros({1, 1}, at::kDouble);
  // At init (z near 0) mass leaks to the unreachable codes 6 and 7.
  GateOutput out = gate->forward(x, false);
  EXPECT_GT(out.nonpow2_penalty_sum.item<double>(), 2.0);
  out.nonpow2_penalty_sum.backward();
  EXPECT_GT(z.grad().abs().max().item<double>(), 0.0);

  // Saturated on reachable codes (2 = 010, 5 = 101): reachable mass 1,
  // penalty exactly k, gradient exactly 0.
  {
    at::NoGradGuard no_grad;
    z.copy_(at::tensor(std::vector<double>{-1, 1, -1, 1, -1, 1}).reshape({1, 2, 3}));
    z.grad().zero_();
  }
  out = gate->forward(x, false);
  EXPECT_EQ(out.nonpow2_penalty_sum.item<double>(), 2.0);
  EXPECT_TRUE(at::equal(out.selector_outputs.sum(-1), at::ones({1, 2}, at::kDouble)));
  out.nonpow2_penalty_sum.backward();
  EXPECT_EQ(z.grad().abs().max().item<double>(), 0.0);
  at::Tensor alpha = param(*gate, "alpha");
  EXPECT_TRUE(!alpha.grad().defined() || alpha.grad().abs().max().item<double>() == 0.0);
  EXPECT_EQ(out.weights.ne(0).sum().item<int64_t>(), 2);

  // All mass on an unreachable code (7 = 111): guarded, finite, no NaN.
  {
    at::NoGradGuard no_grad;
    z.copy_(at::ones({1, 2, 3}, at::kDouble));
    z.grad().zero_();
  }
  out = gate->forward(x, false);
  EXPECT_TRUE(std::isfinite(out.nonpow2_penalty_sum.item<double>()));
  out.nonpow2_penalty_sum.backward();
  EXPECT_TRUE(at::isfinite(z.grad()).all().item<bool>());
}

TEST(GateSparsity, ExactZeros) {
  // Top-k: exactly k nonzeros per (task, example).
  auto topk = make_gate(gate_config(proto::GateConfig::TOP_K, 3, true), GateShape{4, 16, 5}, 2);
  at::Tensor w = topk->forward(at::randn({7, 5}), false).weights;
  ASSERT_EQ(w.sizes(), (std::vector<int64_t>{4, 7, 16}));
  EXPECT_TRUE(at::equal(w.ne(0).sum(-1), at::full({4, 7}, 3, at::kLong)));
  EXPECT_TRUE(at::allclose(w.sum(-1), at::ones({4, 7})));
  // Static DSelect-k with saturated z: at most k nonzeros per task.
  auto ds = make_gate(gate_config(proto::GateConfig::DSELECT_K, 2, false), GateShape{3, 16, 1}, 2,
                      at::kDouble);
  {
    at::NoGradGuard no_grad;
    param(*ds, "z").copy_(at::randn({3, 2, 4}, at::kDouble).sign() * 2);
  }
  at::Tensor q = ds->forward(at::zeros({5, 1}, at::kDouble), false).weights;
  ASSERT_EQ(q.sizes(), (std::vector<int64_t>{3, 5, 16}));
  EXPECT_TRUE((q.ne(0).sum(-1) <= 2).all().item<bool>());
  EXPECT_TRUE(at::allclose(q.sum(-1), at::ones({3, 5}, at::kDouble)));
}

// ------------------------------------------------------ batched vs per task

TEST(GateBatched, MatchesOneGatePerTask) {
  const int64_t T = 4, n = 6, p = 3;
  at::manual_seed(5);
  at::Tensor x = at::randn({5, p}, at::kDouble);
  for (auto type : {proto::GateConfig::DSELECT_K, proto::GateConfig::TOP_K,
                    proto::GateConfig::SOFTMAX})
    for (bool per_example : {false, true}) {
      SCOPED_TRACE(std::to_string(type) + (per_example ? " per_example" : " static"));
      auto cfg = gate_config(type, 2, per_example, 1.0);
      auto all = make_gate(cfg, GateShape{T, n, p}, 8, at::kDouble);
      {
        // Spread z so some bits saturate and selectors differ per task.
        at::NoGradGuard no_grad;
        for (const auto& nt : all->parameters()) nt.tensor.mul_(40.0);
      }
      GateOutput batched = all->forward(x, false);
      ASSERT_EQ(batched.weights.sizes(), (std::vector<int64_t>{T, 5, n}));
      double entropy = 0, penalty = 0;
      for (int64_t t = 0; t < T; ++t) {
        auto one = make_gate(cfg, GateShape{1, n, p}, 9, at::kDouble);
        {
          at::NoGradGuard no_grad;
          for (const auto& nt : one->parameters()) nt.tensor[0].copy_(param(*all, nt.name)[t]);
        }
        GateOutput single = one->forward(x, false);
        EXPECT_TRUE(at::allclose(batched.weights[t], single.weights[0], 1e-13, 1e-15)) << t;
        EXPECT_TRUE(at::equal(batched.weights[t].eq(0), single.weights[0].eq(0))) << t;
        if (type == proto::GateConfig::DSELECT_K)
          EXPECT_TRUE(at::allclose(batched.selector_outputs[t], single.selector_outputs[0],
                                   1e-13, 1e-15));
        entropy += single.entropy_sum.item<double>();
        penalty += single.nonpow2_penalty_sum.item<double>();
      }
      EXPECT_NEAR(batched.entropy_sum.item<double>(), entropy, 1e-10 * (1 + std::abs(entropy)));
      EXPECT_NEAR(batched.nonpow2_penalty_sum.item<double>(), penalty,
                  1e-10 * (1 + std::abs(penalty)));
    }
}

// ------------------------------------------------------- config and init

void expect_usage_error(const proto::GateConfig& cfg, const GateShape& shape,
                        const std::string& message) {
  try {
    make_gate(cfg, shape, 1);
    ADD_FAILURE() << "no UsageError; expected: " << message;
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

TEST(GateConfig, RejectsInvalidConfigNamingTheField) {
  const GateShape shape{2, 8, 4};
  expect_usage_error(gate_config(proto::GateConfig::DSELECT_K, 9, true), shape,
                     "config: model.gate.k = 9 exceeds model.num_experts = 8");
  expect_usage_error(gate_config(proto::GateConfig::TOP_K, 9, false), shape,
                     "config: model.gate.k = 9 exceeds model.num_experts = 8");
  expect_usage_error(gate_config(proto::GateConfig::TOP_K, 0, true), shape,
                     "config: model.gate.k = 0 must be >= 1");
  expect_usage_error(gate_config(proto::GateConfig::DSELECT_K, 2, true, 0.0), shape,
                     "config: model.gate.gamma = 0 must be > 0");
  expect_usage_error(gate_config(proto::GateConfig::DSELECT_K, 2, true, -1.5), shape,
                     "config: model.gate.gamma = -1.5 must be > 0");
  expect_usage_error(gate_config(proto::GateConfig::SOFTMAX, 2, true), GateShape{2, 0, 4},
                     "config: model.num_experts = 0 must be >= 1");
  // Softmax has no k: any k is accepted.
  EXPECT_NO_THROW(make_gate(gate_config(proto::GateConfig::SOFTMAX, 20, true), shape, 1));
}

TEST(GateInit, ShapesBoundsAndDeterminism) {
  const int64_t T = 3, n = 6, p = 5, k = 2, m = 3;
  const double gamma = 2.0;
  auto cfg = gate_config(proto::GateConfig::DSELECT_K, k, true, gamma);
  auto a = make_gate(cfg, GateShape{T, n, p}, 17);
  auto b = make_gate(cfg, GateShape{T, n, p}, 17);
  std::map<std::string, std::pair<std::vector<int64_t>, double>> want = {
      {"z_weight", {{T, k * m, p}, gamma / 100}},
      {"z_bias", {{T, k * m}, gamma / 100}},
      {"alpha_weight", {{T, k, p}, 0.05}},
      {"alpha_bias", {{T, k}, 0.05}}};
  ASSERT_EQ(a->parameters().size(), want.size());
  for (const auto& nt : a->parameters()) {
    SCOPED_TRACE(nt.name);
    ASSERT_TRUE(want.count(nt.name));
    EXPECT_EQ(nt.tensor.sizes(), want[nt.name].first);
    EXPECT_EQ(nt.tensor.scalar_type(), at::kFloat);
    EXPECT_TRUE(nt.tensor.requires_grad());
    EXPECT_LE(nt.tensor.abs().max().item<double>(), want[nt.name].second);
    EXPECT_TRUE(at::equal(nt.tensor, param(*b, nt.name)));
  }
  // Near-uniform start: every expert near 2^-m, nothing saturated.
  // A seeded input: LibTorch's default generator starts from a random seed.
  at::Generator input_gen = make_generator(5, "test.gate_init.x");
  GateOutput out = a->forward(at::randn({4, p}, input_gen), false);
  EXPECT_EQ(out.weights.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::allclose(out.weights, at::full({T, 4, n}, 1.0 / 8), 0, 0.02));

  auto s = make_gate(gate_config(proto::GateConfig::DSELECT_K, k, false, gamma),
                     GateShape{T, n, p}, 17);
  EXPECT_EQ(param(*s, "z").sizes(), (std::vector<int64_t>{T, k, m}));
  EXPECT_EQ(param(*s, "alpha").sizes(), (std::vector<int64_t>{T, k}));
  auto tk = make_gate(gate_config(proto::GateConfig::TOP_K, k, true), GateShape{T, n, p}, 17);
  EXPECT_EQ(param(*tk, "weight").sizes(), (std::vector<int64_t>{T, n, p}));
  EXPECT_EQ(param(*tk, "bias").sizes(), (std::vector<int64_t>{T, n}));
  EXPECT_LE(param(*tk, "weight").abs().max().item<double>(), 1 / std::sqrt(5.0));
  auto ts = make_gate(gate_config(proto::GateConfig::SOFTMAX, k, false), GateShape{T, n, p}, 17);
  EXPECT_EQ(param(*ts, "logits").sizes(), (std::vector<int64_t>{T, n}));
  // Float32 x into a double gate: computed in the gate's dtype.
  auto dg = make_gate(cfg, GateShape{T, n, p}, 17, at::kDouble);
  EXPECT_EQ(dg->forward(at::randn({2, p}), false).weights.scalar_type(), at::kDouble);
}

}  // namespace
}  // namespace dsk::core
