// Distributed results against the one-process reference on the same global
// batch: each rank computes the reference itself (a world of one holding all
// experts) and compares it with its share of the distributed computation.
#include <gtest/gtest.h>

#include <google/protobuf/text_format.h>

#include <map>

#include "core/data/sampler.h"
#include "core/gates/gate.h"
#include "core/proto/config.pb.h"
#include "dist/dispatcher.h"
#include "dist/topology.h"
#include "launch/trainer.h"
#include "tests/dist/mpi_test_env.h"

namespace dsk {
namespace {

using testing::test_world;

// max |a - b| <= rtol * max |b| + atol: relative to the tensor's scale, so
// float summation order (which differs between layouts) is tolerated.
void expect_close(const at::Tensor& actual, const at::Tensor& expected, double rtol, const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double scale = expected.numel() ? expected.abs().max().item<double>() : 0.0;
  const double diff = actual.numel() ? (actual.to(at::kDouble) - expected.to(at::kDouble)).abs().max().item<double>() : 0.0;
  EXPECT_LE(diff, rtol * scale + 1e-9) << what << ": max diff " << diff << " at scale " << scale;
}

core::Dataset random_images(int64_t n, int64_t tasks, int64_t classes, uint64_t seed) {
  at::Generator gen = core::make_generator(seed, "test.images");
  core::Dataset d;
  d.inputs = at::rand({n, 1, 36, 36}, gen);
  d.targets = at::randint(classes, {n, tasks}, gen, at::kLong);
  d.kind = core::TaskKind::kClassification;
  d.num_classes = classes;
  return d;
}

core::Dataset random_regression(int64_t n, int64_t p, int64_t tasks, uint64_t seed) {
  at::Generator gen = core::make_generator(seed, "test.regression");
  core::Dataset d;
  d.inputs = at::randn({n, p}, gen);
  d.targets = at::randn({n, tasks}, gen);
  d.kind = core::TaskKind::kRegression;
  return d;
}

struct OneStep {
  double loss = 0;
  std::map<std::string, at::Tensor> grads;  // this rank's parameters
};

// One step of the trainer's own code path over `world`.
OneStep one_step(const proto::Config& config, const core::Dataset& data, const at::Tensor& global_rows,
                 dist::Communicator& world) {
  dist::Topology topo = dist::make_topology(world, config.parallel().expert_parallel_size());
  models::MmoeModel model(config.model(), models::model_shape_of(data), config.trainer().seed(),
                          *topo.expert_group);
  dist::GradientSync sync(model.replicated_parameters(), world, model.expert_parameters(), *topo.replica_group);
  const int64_t global_batch = global_rows.numel();
  const auto [first, count] = core::rank_slice(global_batch, world.rank(), world.size());
  at::Tensor rows = global_rows.narrow(0, first, count);
  auto step = launch::compute_gradients(model, config.model().gate(), data.inputs.index_select(0, rows),
                                        data.targets.index_select(0, rows), data.kind, global_batch, sync);
  at::Tensor parts = at::cat({step.task_loss_sums.detach().to(at::kDouble) / static_cast<double>(global_batch),
                              step.regularizer.detach().to(at::kDouble).reshape({1})});
  world.all_reduce(parts, dist::ReduceOp::kSum);
  OneStep out;
  out.loss = parts.sum().item<double>();
  for (const auto& group : {model.replicated_parameters(), model.expert_parameters()}) {
    for (const auto& p : group) {
      out.grads[p.name] = p.tensor.grad().defined() ? p.tensor.grad().clone() : at::zeros_like(p.tensor);
    }
  }
  return out;
}

struct Case {
  std::string name;
  std::string model_text;  // proto text of ModelConfig
  bool images;
  int64_t global_batch;
  int expert_parallel_size;  // 0 = all ranks
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class OneStepEquivalence : public ::testing::TestWithParam<Case> {};

TEST_P(OneStepEquivalence, LossAndEveryGradientMatchOneProcess) {
  const Case& c = GetParam();
  dist::Communicator& world = test_world();
  if (c.expert_parallel_size > 0 && world.size() % c.expert_parallel_size != 0) GTEST_SKIP();
  proto::Config config;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(c.model_text, config.mutable_model()));
  config.mutable_trainer()->set_seed(11);
  config.mutable_parallel()->set_expert_parallel_size(c.expert_parallel_size);
  const core::Dataset data = c.images ? random_images(64, 2, 10, 5) : random_regression(64, 12, 3, 5);
  core::EpochSampler sampler(data.size(), 3);
  const at::Tensor rows = sampler.indices(0, c.global_batch);

  auto local = dist::make_local_communicator();
  proto::Config reference_config = config;
  reference_config.mutable_parallel()->set_expert_parallel_size(0);
  const OneStep reference = one_step(reference_config, data, rows, *local);
  const OneStep distributed = one_step(config, data, rows, world);

  EXPECT_NEAR(distributed.loss, reference.loss, 1e-5 * std::abs(reference.loss)) << c.name;
  ASSERT_FALSE(distributed.grads.empty());
  for (const auto& [name, grad] : distributed.grads) {
    ASSERT_TRUE(reference.grads.count(name)) << name;
    expect_close(grad, reference.grads.at(name), 1e-5, c.name + " " + name);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, OneStepEquivalence,
    ::testing::Values(
        Case{"dselect_cnn", "num_experts: 8 gate { type: DSELECT_K k: 2 entropy_reg: 0.1 } "
                            "expert { type: CNN conv_channels: [4, 6] hidden: [16, 12] } tower_hidden: [8]",
             true, 24, 0},
        Case{"dselect_static_n6", "num_experts: 6 gate { type: DSELECT_K k: 2 per_example: false entropy_reg: 0.5 } "
                                  "expert { type: MLP hidden: [10] } tower_hidden: [6]",
             false, 23, 0},
        Case{"topk_mlp_data_parallel", "num_experts: 8 gate { type: TOP_K k: 2 } expert { type: MLP hidden: [10, 7] }",
             false, 30, 1},
        Case{"softmax_n5_e2", "num_experts: 5 gate { type: SOFTMAX } expert { type: MLP hidden: [9] }", false, 17, 2},
        // The layout issue's own setting: 8 experts, k = 2, global batch 40.
        Case{"issue_setting_all_ranks", "num_experts: 8 gate { type: DSELECT_K k: 2 } expert { type: MLP hidden: [16] }",
             false, 40, 0},
        Case{"issue_setting_e2", "num_experts: 8 gate { type: DSELECT_K k: 2 } expert { type: MLP hidden: [16] }",
             false, 40, 2},
        Case{"issue_setting_e1", "num_experts: 8 gate { type: DSELECT_K k: 2 } expert { type: MLP hidden: [16] }",
             false, 40, 1},
        Case{"dselect_batch_of_one", "num_experts: 7 gate { type: DSELECT_K k: 3 gamma: 0.5 } "
                                     "expert { type: MLP hidden: [5] }",
             false, 1, 0}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// The dispatcher against sum_e q_e f_e(x) over all experts.
class DispatcherDense : public ::testing::TestWithParam<proto::GateConfig::Type> {};

TEST_P(DispatcherDense, OutputAndGradientsMatchDenseFormula) {
  dist::Communicator& world = test_world();
  const int64_t n = 6, p = 5, d = 3, tasks = 3, batch = 13;
  proto::GateConfig gate_config;
  gate_config.set_type(GetParam());
  gate_config.set_k(2);
  gate_config.set_gamma(0.5);
  const core::GateShape shape{tasks, n, p};
  auto dense_gate = core::make_gate(gate_config, shape, 4);
  auto dist_gate = core::make_gate(gate_config, shape, 4);
  {
    // Saturate many DSelect-k selectors so some weights are exactly 0.
    at::NoGradGuard no_grad;
    for (auto* g : {dense_gate.get(), dist_gate.get()}) {
      for (auto& param : g->parameters()) param.tensor.mul_(GetParam() == proto::GateConfig::DSELECT_K ? 60.0 : 3.0);
    }
  }
  at::Generator gen = core::make_generator(9, "test.dispatch");
  at::Tensor x_all = at::randn({batch, p}, gen);
  at::Tensor upstream = at::randn({tasks, batch, d}, gen);
  std::vector<at::Tensor> w_dense, w_dist;
  for (int64_t e = 0; e < n; ++e) {
    at::Tensor w = at::randn({d, p}, gen);
    w_dense.push_back(w.clone().set_requires_grad(true));
    w_dist.push_back(w.clone().set_requires_grad(true));
  }
  auto expert = [](const at::Tensor& w, const at::Tensor& rows) { return at::tanh(at::linear(rows, w)); };

  // Dense reference on every rank: all experts on all examples.
  at::Tensor x_dense = x_all.clone().set_requires_grad(true);
  at::Tensor q = dense_gate->forward(x_dense, true).weights;  // [T, B, n]
  std::vector<at::Tensor> f;
  for (int64_t e = 0; e < n; ++e) f.push_back(expert(w_dense[e], x_dense));
  at::Tensor dense_out = at::einsum("tbe,ebd->tbd", {q, at::stack(f)});
  (dense_out * upstream).sum().backward();
  if (GetParam() == proto::GateConfig::DSELECT_K) {
    const int64_t zeros = (q == 0).sum().item<int64_t>();
    EXPECT_GT(zeros, 0) << "the test needs exact zeros";
    EXPECT_LT(zeros, q.numel());
  }

  // Distributed: this rank's slice, its experts.
  dist::ExpertSharding sharding(n, world.size());
  dist::Dispatcher dispatcher(world, sharding, d);
  const auto [first, count] = core::rank_slice(batch, world.rank(), world.size());
  const int64_t first_expert = sharding.first_expert(world.rank());
  at::Tensor x_local = x_all.narrow(0, first, count).clone().set_requires_grad(true);
  at::Tensor q_local = dist_gate->forward(x_local, true).weights;
  dist::DispatchStats stats;
  at::Tensor out = dispatcher.forward(
      x_local, q_local, [&](int64_t j, const at::Tensor& rows) { return expert(w_dist[first_expert + j], rows); },
      &stats);
  (out * upstream.narrow(1, first, count)).sum().backward();

  expect_close(out, dense_out.detach().narrow(1, first, count), 1e-6, "output");
  expect_close(x_local.grad(), x_dense.grad().narrow(0, first, count), 1e-6, "grad x");
  for (int64_t j = 0; j < sharding.num_local(world.rank()); ++j) {
    const int64_t e = first_expert + j;
    expect_close(w_dist[e].grad(), w_dense[e].grad(), 1e-6, "grad expert " + std::to_string(e));
  }
  auto dense_params = dense_gate->parameters();
  auto dist_params = dist_gate->parameters();
  for (size_t i = 0; i < dist_params.size(); ++i) {
    at::Tensor g = dist_params[i].tensor.grad().clone();
    world.all_reduce(g, dist::ReduceOp::kSum);
    expect_close(g, dense_params[i].tensor.grad(), 1e-6, "grad gate." + dist_params[i].name);
  }
  // Only nonzero pairs travel.
  const int64_t pairs_local = ((q.narrow(1, first, count) != 0).any(0)).sum().item<int64_t>();
  EXPECT_EQ(stats.rows_sent(), pairs_local);
}

INSTANTIATE_TEST_SUITE_P(Gates, DispatcherDense,
                         ::testing::Values(proto::GateConfig::DSELECT_K, proto::GateConfig::TOP_K),
                         [](const ::testing::TestParamInfo<proto::GateConfig::Type>& info) {
                           return proto::GateConfig::Type_Name(info.param);
                         });

}  // namespace
}  // namespace dsk
