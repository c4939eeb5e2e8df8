// Dispatcher edge cases at any world size (ctest runs this binary at 1-4
// ranks): experts with no rows, ranks that send or receive nothing, empty
// local batches, every example on one expert, capacity drops, and a forced
// count mismatch that must fail on every rank instead of hanging.
#include <gtest/gtest.h>

#include "core/data/sampler.h"
#include "core/params.h"
#include "dist/dispatcher.h"
#include "tests/dist/mpi_test_env.h"

namespace dsk {
namespace {

using testing::test_world;

constexpr int64_t kFeatures = 4, kOut = 3, kTasks = 2;

struct Experts {
  std::vector<at::Tensor> weights;  // [kOut, kFeatures] each, requires grad
  explicit Experts(int64_t n) {
    at::Generator gen = core::make_generator(1, "test.edge.experts");
    for (int64_t e = 0; e < n; ++e) weights.push_back(at::randn({kOut, kFeatures}, gen).set_requires_grad(true));
  }
  at::Tensor apply(int64_t e, const at::Tensor& rows) const { return at::tanh(at::linear(rows, weights[e])); }
};

// Runs the dispatcher on this rank's slice of a global batch and checks the
// output and the local experts' gradients against the dense formula.
// Returns this rank's stats.
using DenseFormula = std::function<at::Tensor(const at::Tensor& x, const Experts& experts)>;

dist::DispatchStats check_against_dense(const at::Tensor& global_weights, double capacity_factor = 0.0,
                                        int64_t k = 1, const DenseFormula& formula = nullptr) {
  dist::Communicator& world = test_world();
  const int64_t batch = global_weights.size(1), n = global_weights.size(2);
  at::Generator gen = core::make_generator(2, "test.edge.x");
  at::Tensor x = at::randn({batch, kFeatures}, gen);
  at::Tensor upstream = at::randn({kTasks, batch, kOut}, gen);

  Experts dense(n), distributed(n);
  at::Tensor dense_out;
  if (formula) {
    dense_out = formula(x, dense);
  } else {
    std::vector<at::Tensor> f;
    for (int64_t e = 0; e < n; ++e) f.push_back(dense.apply(e, x));
    dense_out = at::einsum("tbe,ebd->tbd", {global_weights, at::stack(f)});
  }
  (dense_out * upstream).sum().backward();

  dist::ExpertSharding sharding(n, world.size());
  dist::Dispatcher dispatcher(world, sharding, kOut, capacity_factor, k);
  const auto [first, count] = core::rank_slice(batch, world.rank(), world.size());
  const int64_t first_expert = sharding.first_expert(world.rank());
  dist::DispatchStats stats;
  at::Tensor out = dispatcher.forward(
      x.narrow(0, first, count), global_weights.narrow(1, first, count),
      [&](int64_t j, const at::Tensor& rows) { return distributed.apply(first_expert + j, rows); }, &stats);
  (out * upstream.narrow(1, first, count)).sum().backward();

  EXPECT_TRUE(at::allclose(out, dense_out.detach().narrow(1, first, count), 1e-5, 1e-6));
  for (int64_t j = 0; j < sharding.num_local(world.rank()); ++j) {
    const int64_t e = first_expert + j;
    at::Tensor got = distributed.weights[e].grad();
    at::Tensor want = dense.weights[e].grad();
    if (!got.defined()) got = at::zeros_like(distributed.weights[e]);
    if (!want.defined()) want = at::zeros_like(dense.weights[e]);
    EXPECT_TRUE(at::allclose(got, want, 1e-5, 1e-6)) << "expert " << e;
  }
  return stats;
}

at::Tensor one_hot_weights(int64_t batch, int64_t n, const std::function<int64_t(int64_t)>& expert_of) {
  at::Tensor w = at::zeros({kTasks, batch, n});
  for (int64_t b = 0; b < batch; ++b) {
    w[0][b][expert_of(b)] = 0.7;
    w[1][b][expert_of(b)] = 1.3;
  }
  return w;
}

TEST(DispatchEdge, EveryExampleOnOneExpert) {
  const auto stats = check_against_dense(one_hot_weights(11, 6, [](int64_t) { return 5; }));
  // Only the owner of expert 5 receives rows; everyone else receives none.
  dist::ExpertSharding sharding(6, test_world().size());
  const int64_t received = stats.rows_received();
  at::Tensor total = at::tensor({received}, at::kLong);
  test_world().all_reduce(total, dist::ReduceOp::kSum);
  EXPECT_EQ(total.item<int64_t>(), 11);
  if (sharding.owner(5) != test_world().rank()) EXPECT_EQ(received, 0);
}

TEST(DispatchEdge, ExpertsWithoutRowsAndRanksThatSendNothing) {
  // Examples of the first half go to expert 0; the rest have zero weight
  // everywhere, so the last ranks send nothing; experts 1..n-1 get nothing.
  const int64_t batch = 9;
  at::Tensor w = one_hot_weights(batch, 5, [](int64_t) { return 0; });
  w.narrow(1, batch / 2, batch - batch / 2).zero_();
  check_against_dense(w);
}

TEST(DispatchEdge, EmptyLocalBatches) {
  // A global batch of 1 leaves every rank but rank 0 with no examples.
  // Every rank must draw the same weights: a seeded generator, not the global one.
  at::Generator gen = core::make_generator(5, "test.edge.empty");
  check_against_dense(at::rand({kTasks, 1, 7}, gen));
  // And a batch of 0 on every rank.
  check_against_dense(at::zeros({kTasks, 0, 7}));
}

TEST(DispatchEdge, DenseRandomRouting) {
  at::Generator gen = core::make_generator(3, "test.edge.w");
  at::Tensor w = at::rand({kTasks, 17, 6}, gen);
  w = w * (w > 0.6);  // about 40% of the pairs survive
  check_against_dense(w);
}

TEST(DispatchEdge, CapacityDropsTheLastRowsInGlobalOrder) {
  // 8 examples all on expert 0 of 4, k = 1, capacity factor 1:
  // capacity = ceil(1 * 8 * 1 / 4) = 2, so only global examples 0 and 1 get output.
  const int64_t batch = 8, n = 4;
  at::Tensor w = one_hot_weights(batch, n, [](int64_t) { return 0; });
  auto first_two_only = [&](const at::Tensor& x, const Experts& experts) {
    at::Tensor kept = w.narrow(1, 0, 2).select(2, 0).unsqueeze(-1) * experts.apply(0, x.narrow(0, 0, 2)).unsqueeze(0);
    return at::cat({kept, at::zeros({kTasks, batch - 2, kOut})}, 1);
  };
  const auto stats = check_against_dense(w, /*capacity_factor=*/1.0, /*k=*/1, first_two_only);
  at::Tensor dropped = at::tensor({stats.dropped_rows}, at::kLong);
  test_world().all_reduce(dropped, dist::ReduceOp::kSum);
  EXPECT_EQ(dropped.item<int64_t>(), 6);
}

// Announces one row more than it sends, on the last rank only.
class LyingDispatcher : public dist::Dispatcher {
 public:
  LyingDispatcher(dist::Communicator& comm, int64_t num_experts)
      : dist::Dispatcher(comm, dist::ExpertSharding(num_experts, comm.size()), kOut),
        lies_(comm.rank() == comm.size() - 1) {}

 protected:
  void announce_hook(at::Tensor& announced) override {
    if (lies_) announced[0] += 1;
  }

 private:
  bool lies_;
};

TEST(DispatchEdge, ForcedCountMismatchFailsOnEveryRank) {
  dist::Communicator& world = test_world();
  LyingDispatcher dispatcher(world, 4);
  at::Tensor x = at::randn({3, kFeatures});
  at::Tensor w = at::ones({kTasks, 3, 4});
  try {
    dispatcher.forward(x, w, [](int64_t, const at::Tensor& rows) { return rows.narrow(1, 0, kOut); });
    ADD_FAILURE() << "the mismatch went unnoticed";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("row counts disagree"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dsk
