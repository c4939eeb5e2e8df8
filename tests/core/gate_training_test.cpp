// The gate regularizers in training: they reach the optimizer, the
// non-power-of-two penalty drives the reachable weight to 1, the entropy
// schedule, the batch reduction, noisy Top-k, load balancing and the gate
// statistics (docs/gates.md).
#include <gtest/gtest.h>

#include <google/protobuf/text_format.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "tests/core/gate_test_util.h"
#include "core/adam.h"
#include "core/error.h"
#include "core/gates/gate.h"
#include "core/gates/gate_stats.h"
#include "core/gates/gates_impl.h"
#include "core/gates/regularizers.h"
#include "core/proto/config.pb.h"
#include "dist/grad_sync.h"
#include "dist/topology.h"
#include "launch/trainer.h"
#include "models/mmoe.h"

namespace dsk::core {
namespace {

proto::GateConfig dselect(int64_t k, bool per_example, double entropy_reg = 0.0) {
  proto::GateConfig c;
  c.set_type(proto::GateConfig::DSELECT_K);
  c.set_k(static_cast<int32_t>(k));
  c.set_per_example(per_example);
  c.set_entropy_reg(entropy_reg);
  return c;
}

proto::GateConfig topk(int64_t k, bool per_example, bool noisy,
                       proto::GateConfig::LoadBalance balance = proto::GateConfig::NONE) {
  proto::GateConfig c;
  c.set_type(proto::GateConfig::TOP_K);
  c.set_k(static_cast<int32_t>(k));
  c.set_per_example(per_example);
  c.set_noisy(noisy);
  c.set_load_balance(balance);
  return c;
}

at::Tensor param(const Gate& gate, const std::string& name) { return test_util::gate_param(gate, name); }

std::map<std::string, at::Tensor> snapshot(const Gate& gate) {
  std::map<std::string, at::Tensor> out;
  for (const auto& nt : gate.parameters()) out[nt.name] = nt.tensor.detach().clone();
  return out;
}

// ------------------------------------------- the regularizer reaches Adam

// The LibMTL defect: regularizer gradients computed in the forward and wiped
// by zero_grad never act. Here the entropy term is the only nonzero loss and
// one Adam step after zero_grad must move every task's z parameters.
TEST(GateRegularizer, EntropyAloneMovesTheParametersThroughAdam) {
  const int64_t T = 3, n = 8, p = 5, B = 16;
  at::manual_seed(3);
  at::Tensor x = at::randn({B, p});
  for (double lambda : {0.5, 0.0}) {
    SCOPED_TRACE("entropy_reg = " + std::to_string(lambda));
    const proto::GateConfig cfg = dselect(2, true, lambda);
    auto gate = make_gate(cfg, GateShape{T, n, p}, 7);
    const auto before = snapshot(*gate);
    Adam adam(gate->parameters(), AdamOptions{});
    adam.zero_grad();
    GateOutput out = gate->forward(x, /*training=*/true);
    // Data loss exactly 0 but in the graph: it contributes 0 gradients.
    at::Tensor data_loss = 0.0 * out.weights.sum();
    at::Tensor loss = data_loss + models::regularizer_share(out, cfg, B, B, /*step=*/1);
    loss.backward();
    adam.step();
    for (const auto& nt : gate->parameters()) {
      const double moved = (nt.tensor.detach() - before.at(nt.name)).abs().max().item<double>();
      const bool z_param = nt.name.rfind("z_", 0) == 0;
      if (lambda > 0 && z_param) {
        // Every task's selectors carry the entropy term, not only the last.
        for (int64_t t = 0; t < T; ++t)
          EXPECT_GT((nt.tensor[t].detach() - before.at(nt.name)[t]).abs().max().item<double>(), 1e-5)
              << nt.name << " task " << t;
      } else {
        // alpha does not enter the selector entropy; with lambda = 0 nothing moves.
        EXPECT_EQ(moved, 0.0) << nt.name;
      }
    }
  }
}

// The same through the trainer's own step (launch::compute_gradients on the
// full model with a world of one): the entropy coefficient changes the gate
// parameters after one Adam step.
TEST(GateRegularizer, ReachesTheOptimizerThroughComputeGradients) {
  auto world = dist::make_local_communicator();
  core::Dataset data;
  at::Generator gen = make_generator(5, "test.reg");
  data.inputs = at::randn({32, 6}, gen);
  data.targets = at::randn({32, 2}, gen);
  data.kind = TaskKind::kRegression;
  std::vector<std::map<std::string, at::Tensor>> after;
  for (double lambda : {0.0, 1.0}) {
    proto::ModelConfig mc;
    ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
        "num_experts: 8 gate { type: DSELECT_K k: 2 } expert { type: MLP hidden: [5] } tower_hidden: [4]", &mc));
    mc.mutable_gate()->set_entropy_reg(lambda);
    dist::Topology topo = dist::make_topology(*world, 0);
    models::MmoeModel model(mc, models::model_shape_of(data), 11, *topo.expert_group);
    NamedTensors params = model.replicated_parameters();
    for (auto& e : model.expert_parameters()) params.push_back(e);
    Adam adam(params, AdamOptions{});
    dist::GradientSync sync(model.replicated_parameters(), *world, model.expert_parameters(), *topo.replica_group);
    adam.zero_grad();
    launch::compute_gradients(model, mc.gate(), data.inputs, data.targets, data.kind, 32, sync, /*train_step=*/1);
    adam.step();
    std::map<std::string, at::Tensor> values;
    for (const auto& p : model.replicated_parameters()) values[p.name] = p.tensor.detach().clone();
    after.push_back(values);
  }
  EXPECT_GT((after[0].at("gate.z_weight") - after[1].at("gate.z_weight")).abs().max().item<double>(), 1e-6);
  EXPECT_GT((after[0].at("gate.z_bias") - after[1].at("gate.z_bias")).abs().max().item<double>(), 1e-6);
}

// ------------------------------------ n = 6: reachable weight 1 after training

TEST(GateTraining, NonPowerOfTwoWeightsSumToOneAfterTraining) {
  // 1000 steps leave ~2e-5 of leaked mass on some held-out rows; 2000 reach
  // float32 rounding (~3e-7).
  const int64_t T = 2, n = 6, p = 8, B = 64, steps = 2000;
  at::manual_seed(21);
  // Synthetic regression: task t's target is the output of a fixed random
  // linear "expert" plus a little noise; the gate mixes 6 trainable experts.
  at::Tensor truth = at::randn({T, p});
  auto batch = [&](int64_t rows) {
    at::Tensor x = at::randn({rows, p});
    at::Tensor y = at::matmul(x, truth.t()).t() + 0.01 * at::randn({T, rows});  // [T, B]
    return std::make_pair(x, y);
  };
  const proto::GateConfig cfg = dselect(2, true);
  auto gate = make_gate(cfg, GateShape{T, n, p}, 4);
  at::Tensor experts = (0.1 * at::randn({n, p})).requires_grad_(true);
  NamedTensors params = gate->parameters();
  params.push_back({"experts", experts});
  Adam adam(params, AdamOptions{1e-2});

  GateOutput at_init = gate->forward(batch(B).first, true);
  EXPECT_LT(at_init.weights.sum(-1).min().item<double>(), 0.9);  // mass leaks at init

  for (int64_t step = 1; step <= steps; ++step) {
    auto [x, y] = batch(B);
    adam.zero_grad();
    GateOutput out = gate->forward(x, true);
    at::Tensor f = at::matmul(x, experts.t());                   // [B, n]
    at::Tensor pred = (out.weights * f.unsqueeze(0)).sum(-1);    // [T, B]
    at::Tensor loss = (pred - y).pow(2).sum() / static_cast<double>(B) +
                      models::regularizer_share(out, cfg, B, B, step);
    loss.backward();
    adam.step();
  }
  at::NoGradGuard no_grad;
  GateOutput held_out = gate->forward(batch(512).first, false);
  at::Tensor sums = held_out.weights.sum(-1);  // [T, 512]
  const double worst = (sums - 1.0).abs().max().item<double>();
  std::printf("n=6 k=2 after %lld steps: max |sum_i q_i - 1| = %.3g over %lld held-out rows\n",
              static_cast<long long>(steps), worst, static_cast<long long>(sums.numel()));
  EXPECT_LE(worst, 1e-5);
  EXPECT_TRUE((held_out.weights >= 0).all().item<bool>());
}

// ---------------------------------------------------------- the schedule

TEST(EntropySchedule, ValuesAtChosenSteps) {
  proto::GateConfig c = dselect(2, true, 0.2);
  c.set_entropy_schedule_steps(100);
  EXPECT_DOUBLE_EQ(entropy_coefficient(c, 0), 0.2);
  EXPECT_DOUBLE_EQ(entropy_coefficient(c, 1), 0.2);
  EXPECT_DOUBLE_EQ(entropy_coefficient(c, 100000), 0.2);
  c.set_entropy_schedule(proto::GateConfig::LINEAR_RAMP);
  EXPECT_DOUBLE_EQ(entropy_coefficient(c, 0), 0.0);
  EXPECT_DOUBLE_EQ(entropy_coefficient(c, 1), 0.002);
  EXPECT_DOUBLE_EQ(entropy_coefficient(c, 25), 0.05);
  EXPECT_DOUBLE_EQ(entropy_coefficient(c, 100), 0.2);
  EXPECT_DOUBLE_EQ(entropy_coefficient(c, 250), 0.2);
  c.set_entropy_schedule(proto::GateConfig::EXPONENTIAL);
  EXPECT_DOUBLE_EQ(entropy_coefficient(c, 0), 0.0);
  EXPECT_NEAR(entropy_coefficient(c, 100), 0.2 * (1 - std::exp(-1.0)), 1e-15);
  EXPECT_NEAR(entropy_coefficient(c, 300), 0.2 * (1 - std::exp(-3.0)), 1e-15);
  EXPECT_LT(entropy_coefficient(c, 5000), 0.2 + 1e-15);
  EXPECT_GT(entropy_coefficient(c, 5000), 0.2 - 1e-15);
  // The schedule reaches the loss: regularizer_share at step 25 of the ramp
  // is a quarter of the constant one's entropy part.
  c.set_entropy_schedule(proto::GateConfig::LINEAR_RAMP);
  auto gate = make_gate(c, GateShape{2, 8, 3}, 1, at::kDouble);
  GateOutput out = gate->forward(at::randn({4, 3}, at::kDouble), true);
  const double at25 = models::regularizer_share(out, c, 4, 4, 25).item<double>();
  c.set_entropy_schedule(proto::GateConfig::CONSTANT);
  const double constant = models::regularizer_share(out, c, 4, 4, 25).item<double>();
  c.set_entropy_schedule(proto::GateConfig::LINEAR_RAMP);
  EXPECT_NEAR(at25, 0.25 * constant, 1e-12 * constant);
  // Invalid horizon rejected by make_gate, naming the field.
  c.set_entropy_schedule_steps(0);
  try {
    make_gate(c, GateShape{2, 8, 3}, 1);
    ADD_FAILURE() << "no UsageError";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "config: model.gate.entropy_schedule_steps = 0 must be >= 1");
  }
}

// ------------------------------------------------------- SUM vs MEAN

TEST(RegularizerReduction, SumIsGlobalBatchTimesMeanForPerExampleGates) {
  const int64_t B = 10, local = 4;
  at::manual_seed(8);
  for (bool per_example : {true, false}) {
    SCOPED_TRACE(per_example ? "per-example" : "static");
    proto::GateConfig c = dselect(2, per_example, 0.3);  // n = 6: penalty active too
    auto gate = make_gate(c, GateShape{3, 6, 4}, 2, at::kDouble);
    at::Tensor x = at::randn({B, 4}, at::kDouble);
    GateOutput whole = gate->forward(x, true);
    const double mean = models::regularizer_share(whole, c, B, B, 1).item<double>();
    c.set_regularizer_reduction(proto::GateConfig::SUM);
    const double sum = models::regularizer_share(whole, c, B, B, 1).item<double>();
    const double raw = whole.nonpow2_penalty_sum.item<double>() + 0.3 * whole.entropy_sum.item<double>();
    if (per_example) {
      EXPECT_NEAR(sum, B * mean, 1e-12 * std::abs(sum));
      EXPECT_NEAR(sum, raw, 1e-12 * std::abs(sum));
    } else {
      // A static term is counted once per step under either reduction.
      EXPECT_NEAR(sum, mean, 1e-12 * std::abs(sum));
      EXPECT_NEAR(sum, raw, 1e-12 * std::abs(sum));
    }
    // Two "ranks" holding rows [0, 4) and [4, 10): their shares add up to
    // the one-process term, under both reductions.
    for (auto red : {proto::GateConfig::MEAN, proto::GateConfig::SUM}) {
      c.set_regularizer_reduction(red);
      GateOutput a = gate->forward(x.narrow(0, 0, local), true);
      GateOutput b = gate->forward(x.narrow(0, local, B - local), true);
      const double parts = models::regularizer_share(a, c, local, B, 1).item<double>() +
                           models::regularizer_share(b, c, B - local, B, 1).item<double>();
      const double one = models::regularizer_share(whole, c, B, B, 1).item<double>();
      EXPECT_NEAR(parts, one, 1e-12 * std::abs(one)) << proto::GateConfig::Reduction_Name(red);
    }
  }
}

// ----------------------------------------------------------- noisy Top-k

TEST(NoisyTopK, NoNoiseInEvalNoiseInTraining) {
  const int64_t T = 3, n = 8, p = 4, B = 6;
  at::manual_seed(4);
  at::Tensor x = at::randn({B, p});
  auto noisy = make_gate(topk(2, true, true), GateShape{T, n, p}, 9);
  auto plain = make_gate(topk(2, true, false), GateShape{T, n, p}, 9);
  ASSERT_EQ(noisy->parameters().size(), 4u);
  EXPECT_EQ(param(*noisy, "noise_weight").sizes(), (std::vector<int64_t>{T, n, p}));
  EXPECT_EQ(param(*noisy, "noise_bias").sizes(), (std::vector<int64_t>{T, n}));
  // Eval: deterministic, and the same as the noiseless gate (same init).
  at::Tensor e1 = noisy->forward(x, false).weights;
  at::Tensor e2 = noisy->forward(x, false).weights;
  EXPECT_TRUE(at::equal(e1, e2));
  EXPECT_TRUE(at::equal(e1, plain->forward(x, false).weights));
  EXPECT_TRUE(at::equal(plain->forward(x, true).weights, e1));  // no noise without `noisy`
  // Training: noise changes the weights, the same seed gives the same noise.
  noisy->set_noise_seed(5);
  at::Tensor t1 = noisy->forward(x, true).weights;
  at::Tensor t1b = noisy->forward(x, true).weights;  // stream moves on
  noisy->set_noise_seed(5);
  at::Tensor t1c = noisy->forward(x, true).weights;
  EXPECT_GT((t1 - e1).abs().max().item<double>(), 1e-3);
  EXPECT_FALSE(at::equal(t1, t1b));
  EXPECT_TRUE(at::equal(t1, t1c));
  EXPECT_TRUE(at::equal(t1.ne(0).sum(-1), at::full({T, B}, 2, at::kLong)));
  EXPECT_TRUE(at::allclose(t1.sum(-1), at::ones({T, B})));
  // The noise scale is trainable: it gets a gradient in training.
  noisy->set_noise_seed(6);
  at::Tensor up = at::randn({T, B, n});
  (noisy->forward(x, true).weights * up).sum().backward();
  EXPECT_GT(param(*noisy, "noise_weight").grad().abs().max().item<double>(), 0.0);
  EXPECT_GT(param(*noisy, "noise_bias").grad().abs().max().item<double>(), 0.0);

  // Static noisy Top-k: one trainable noise logit per (task, expert); in
  // training the rows differ (noise per example), in eval they do not.
  auto st = make_gate(topk(2, false, true), GateShape{T, n, p}, 9);
  EXPECT_EQ(param(*st, "noise_logits").sizes(), (std::vector<int64_t>{T, n}));
  at::Tensor se = st->forward(x, false).weights;
  EXPECT_TRUE(at::equal(se, se.select(1, 0).unsqueeze(1).expand_as(se)));
  at::Tensor sn = st->forward(x, true).weights;
  EXPECT_FALSE(at::equal(sn, sn.select(1, 0).unsqueeze(1).expand_as(sn)));
  // Noise and load balancing are Top-k only.
  proto::GateConfig bad = dselect(2, true);
  bad.set_noisy(true);
  EXPECT_THROW(make_gate(bad, GateShape{T, n, p}, 1), UsageError);
}

// FD check of noisy Top-k with the noise fixed (same seed before every
// forward), with and without the load-balancing losses, and noise off.
TEST(NoisyTopK, FiniteDifferenceWithFixedNoise) {
  const int64_t T = 2, B = 5, p = 3;
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> unit(-1.0, 1.0);
  double worst = 0;
  for (int64_t n : {5, 8}) {
    for (bool per_example : {true, false}) {
      for (auto balance : {proto::GateConfig::NONE, proto::GateConfig::IMPORTANCE_LOAD, proto::GateConfig::SWITCH}) {
        for (bool training : {true, false}) {
          SCOPED_TRACE("n=" + std::to_string(n) + " per_example=" + std::to_string(per_example) + " balance=" +
                       proto::GateConfig::LoadBalance_Name(balance) + " training=" + std::to_string(training));
          auto gate = make_gate(topk(2, per_example, true, balance), GateShape{T, n, p}, 3, at::kDouble);
          {
            at::NoGradGuard no_grad;
            for (const auto& nt : gate->parameters()) {
              double* ptr = nt.tensor.data_ptr<double>();
              for (int64_t i = 0; i < nt.tensor.numel(); ++i) ptr[i] = unit(rng);
            }
          }
          at::Tensor x = (at::rand({B, p}, at::kDouble) * 2 - 1).requires_grad_(per_example);
          at::Tensor up = at::randn({T, B, n}, at::kDouble);
          auto loss_of = [&]() {
            gate->set_noise_seed(123);
            GateOutput out = gate->forward(x, training);
            return (out.weights * up).sum() + 0.7 * out.load_balance_loss;
          };
          loss_of().backward();
          std::vector<std::pair<std::string, at::Tensor>> tensors;
          for (const auto& nt : gate->parameters()) tensors.emplace_back(nt.name, nt.tensor);
          if (per_example) tensors.emplace_back("x", x);
          const double h = 1e-6;
          for (const auto& [name, t] : tensors) {
            at::Tensor g = t.grad().defined() ? t.grad().contiguous() : at::zeros_like(t);
            at::NoGradGuard no_grad;
            double* ptr = t.data_ptr<double>();
            for (int64_t i = 0; i < t.numel(); ++i) {
              const double orig = ptr[i];
              ptr[i] = orig + h;
              const double a = loss_of().item<double>();
              ptr[i] = orig - h;
              const double b = loss_of().item<double>();
              ptr[i] = orig;
              const double fd = (a - b) / (2 * h);
              const double an = g.data_ptr<double>()[i];
              worst = std::max(worst, std::abs(fd - an) / (1 + std::abs(an)));
              EXPECT_NEAR(fd, an, 1e-5 * (1 + std::abs(an))) << name << "[" << i << "]";
            }
          }
          if (!training) EXPECT_EQ(param(*gate, per_example ? "noise_weight" : "noise_logits").grad().defined() &&
                                       param(*gate, per_example ? "noise_weight" : "noise_logits").grad().abs().max().item<double>() > 0,
                                   false);
        }
      }
    }
  }
  std::printf("noisy Top-k worst finite-difference relative error %.3g\n", worst);
}

// ------------------------------------------------------- load balancing

TEST(GateLoadBalance, ValuesAndTheAllReducePath) {
  // CV^2 on hand-built sums.
  GateOutput::BalanceSums s;
  s.importance = at::tensor(std::vector<double>{1, 1, 1, 1, 2, 0, 0, 0}).reshape({2, 4});
  s.load = at::tensor(std::vector<double>{3, 3, 3, 3, 1, 1, 1, 1}).reshape({2, 4});
  s.prob_sum = at::tensor(std::vector<double>{1, 1, 1, 1, 4, 0, 0, 0}).reshape({2, 4});
  s.routed_count = at::tensor(std::vector<int64_t>{2, 2, 2, 2, 8, 0, 0, 0}).reshape({2, 4});
  s.examples = 4;
  proto::GateConfig c = topk(2, true, false, proto::GateConfig::IMPORTANCE_LOAD);
  // Task 0: balanced (0); task 1: importance [2,0,0,0] has CV^2 = 0.75/0.25 = 3.
  EXPECT_NEAR(load_balance_loss(s, c).item<double>(), 3.0, 1e-8);  // eps 1e-10 in CV^2
  c.set_load_balance(proto::GateConfig::SWITCH);
  // Task 0: f = 1/4, P = 1/4 -> 4 * 4 * 1/16 = 1; task 1: f = (1,0,0,0), P = (1,0,0,0) -> 4.
  EXPECT_NEAR(load_balance_loss(s, c).item<double>(), 5.0, 1e-12);

  // Sums of two halves of a batch, added (what an all-reduce does), give the
  // loss of the whole batch: the exact multi-rank loss for a caller that
  // reduces `balance` first.
  at::manual_seed(2);
  for (auto method : {proto::GateConfig::IMPORTANCE_LOAD, proto::GateConfig::SWITCH}) {
    proto::GateConfig cfg = topk(2, true, false, method);
    auto gate = make_gate(cfg, GateShape{3, 8, 4}, 5, at::kDouble);
    at::Tensor x = at::randn({12, 4}, at::kDouble);
    GateOutput whole = gate->forward(x, true);
    GateOutput a = gate->forward(x.narrow(0, 0, 5), true);
    GateOutput b = gate->forward(x.narrow(0, 5, 7), true);
    GateOutput::BalanceSums r;
    r.importance = a.balance.importance + b.balance.importance;
    r.load = a.balance.load + b.balance.load;
    r.prob_sum = a.balance.prob_sum + b.balance.prob_sum;
    r.routed_count = a.balance.routed_count + b.balance.routed_count;
    r.examples = a.balance.examples + b.balance.examples;
    EXPECT_NEAR(load_balance_loss(r, cfg).item<double>(), whole.load_balance_loss.item<double>(), 1e-12);
    EXPECT_GT(whole.load_balance_loss.item<double>(), 0.0);
    // In the loss: coefficient times this rank's share of the batch.
    cfg.set_load_balance_coef(0.5);
    EXPECT_NEAR(models::regularizer_share(a, cfg, 5, 12, 1).item<double>(),
                0.5 * 5.0 / 12.0 * a.load_balance_loss.item<double>(), 1e-12);
  }
  // Off by default: a zero scalar, no balance sums.
  auto plain = make_gate(topk(2, true, false), GateShape{3, 8, 4}, 5);
  GateOutput out = plain->forward(at::randn({3, 4}), true);
  EXPECT_EQ(out.load_balance_loss.item<double>(), 0.0);
  EXPECT_FALSE(out.balance.importance.defined());
  proto::GateConfig bad = dselect(2, true);
  bad.set_load_balance(proto::GateConfig::SWITCH);
  try {
    make_gate(bad, GateShape{3, 8, 4}, 1);
    ADD_FAILURE() << "no UsageError";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "config: model.gate.load_balance = SWITCH needs model.gate.type = TOP_K");
  }
}

// ------------------------------------------------------------- statistics

TEST(GateStats, HandBuiltOutput) {
  at::manual_seed(6);  // LibTorch's default generator starts from a random seed
  GateOutput out;
  // T = 2, B = 2, n = 4.
  out.weights = at::tensor(std::vector<double>{0.5, 0.5, 0, 0,   // t0 b0: 2 nonzero
                                               1, 0, 0, 0,       // t0 b1: 1
                                               0.25, 0.25, 0.25, 0.25,  // t1 b0: 4
                                               0, 0, 0.7, 0.3})  // t1 b1: 2
                    .reshape({2, 2, 4});
  // Selectors [T, B, k = 2, n]: t0 all four one-hot; t1: one of four.
  at::Tensor sel = at::zeros({2, 2, 2, 4}, at::kDouble);
  sel[0][0][0][0] = 1;
  sel[0][0][1][1] = 1;
  sel[0][1][0][0] = 1;
  sel[0][1][1][0] = 1;
  sel[1][0][0].fill_(0.25);
  sel[1][0][1].fill_(0.25);
  sel[1][1][0][2] = 1;
  sel[1][1][1][2] = 0.6;
  sel[1][1][1][3] = 0.4;
  out.selector_outputs = sel;
  GateStats s = gate_statistics(out);
  EXPECT_TRUE(at::allclose(s.mean_nonzero_experts, at::tensor(std::vector<double>{1.5, 3.0})));
  EXPECT_TRUE(at::allclose(s.binary_selector_fraction, at::tensor(std::vector<double>{1.0, 0.25})));
  EXPECT_TRUE(at::allclose(s.expert_share,
                           at::tensor(std::vector<double>{0.75, 0.25, 0, 0, 0.125, 0.125, 0.475, 0.275})
                               .reshape({2, 4})));
  EXPECT_TRUE(at::allclose(s.expert_share.sum(-1), at::ones({2}, at::kDouble)));
  // Static selectors [T, k, n]; gates without selectors report NaN.
  GateOutput st;
  st.weights = at::tensor(std::vector<double>{0, 1, 0, 0}).reshape({1, 1, 4}).expand({1, 3, 4});
  st.selector_outputs = at::tensor(std::vector<double>{0, 1, 0, 0, 0.5, 0.5, 0, 0}).reshape({1, 2, 4});
  GateStats ss = gate_statistics(st);
  EXPECT_DOUBLE_EQ(ss.binary_selector_fraction.item<double>(), 0.5);
  EXPECT_DOUBLE_EQ(ss.mean_nonzero_experts.item<double>(), 1.0);
  st.selector_outputs = at::Tensor();
  EXPECT_TRUE(std::isnan(gate_statistics(st).binary_selector_fraction.item<double>()));
  // On real gates: Top-k has exactly k nonzeros; saturated DSelect-k is binary.
  auto tk = make_gate(topk(3, true, false), GateShape{4, 16, 5}, 2);
  GateStats ts = gate_statistics(tk->forward(at::randn({7, 5}), false));
  EXPECT_TRUE(at::allclose(ts.mean_nonzero_experts, at::full({4}, 3.0, at::kDouble)));
  EXPECT_EQ(ts.expert_share.sizes(), (std::vector<int64_t>{4, 16}));
  auto ds = make_gate(dselect(2, false), GateShape{3, 16, 1}, 2, at::kDouble);
  {
    at::NoGradGuard no_grad;
    param(*ds, "z").copy_(at::randn({3, 2, 4}, at::kDouble).sign() * 2);
  }
  GateStats dss = gate_statistics(ds->forward(at::zeros({5, 1}, at::kDouble), false));
  EXPECT_TRUE(at::equal(dss.binary_selector_fraction, at::ones({3}, at::kDouble)));
}

// ------------------------------------------------------------- precision

TEST(GatePrecision, RoutingRunsInFloat32WhateverTheInput) {
  auto gate = make_gate(dselect(2, true), GateShape{2, 6, 4}, 1);
  at::Tensor x = at::randn({3, 4});
  GateOutput out = gate->forward(x.to(at::kBFloat16), true);
  EXPECT_EQ(out.weights.scalar_type(), at::kFloat);
  EXPECT_EQ(out.entropy_sum.scalar_type(), at::kFloat);
  for (auto cfg : {dselect(2, true), topk(2, true, true)}) {
    EXPECT_THROW(make_gate(cfg, GateShape{2, 6, 4}, 1, at::kHalf), UsageError);
    EXPECT_THROW(make_gate(cfg, GateShape{2, 6, 4}, 1, at::kBFloat16), UsageError);
  }
  auto noisy = make_gate(topk(2, true, true), GateShape{2, 6, 4}, 1);
  EXPECT_EQ(noisy->forward(x.to(at::kHalf), true).weights.scalar_type(), at::kFloat);
}

}  // namespace
}  // namespace dsk::core
