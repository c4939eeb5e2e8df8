// After training, the replicated parameters must be bitwise identical on
// every rank, each expert bitwise identical across its replicas, and the
// experts different from one another.
#include <gtest/gtest.h>

#include "core/adam.h"
#include "core/data/sampler.h"
#include "core/proto/config.pb.h"
#include "dist/topology.h"
#include "launch/trainer.h"
#include "tests/dist/mpi_test_env.h"

namespace dsk {
namespace {

using testing::test_world;

TEST(Replicas, BitwiseEqualAfterTenStepsAndExpertsDiffer) {
  dist::Communicator& world = test_world();
  const int e = world.size() % 2 == 0 ? world.size() / 2 : world.size();  // D = 2 where possible
  proto::Config config;
  auto* model_config = config.mutable_model();
  model_config->set_num_experts(6);
  model_config->mutable_gate()->set_k(2);
  model_config->mutable_expert()->set_type(proto::ExpertConfig::MLP);
  model_config->mutable_expert()->add_hidden(8);

  at::Generator gen = core::make_generator(4, "test.replicas");
  core::Dataset data;
  data.inputs = at::randn({200, 6}, gen);
  data.targets = at::randn({200, 2}, gen);
  data.kind = core::TaskKind::kRegression;

  dist::Topology topo = dist::make_topology(world, e);
  models::MmoeModel model(*model_config, models::model_shape_of(data), 3, *topo.expert_group);
  core::NamedTensors all = model.replicated_parameters();
  for (auto& p : model.expert_parameters()) all.push_back(p);
  core::Adam adam(all, core::AdamOptions{});
  dist::GradientSync sync(model.replicated_parameters(), world, model.expert_parameters(), *topo.replica_group);
  core::EpochSampler sampler(data.size(), 1);
  const int64_t global_batch = 21;
  const auto [first, count] = core::rank_slice(global_batch, world.rank(), world.size());
  for (int64_t step = 1; step <= 10; ++step) {
    at::Tensor rows = sampler.indices((step - 1) * global_batch + first, count);
    adam.zero_grad();
    launch::compute_gradients(model, config.model().gate(), data.inputs.index_select(0, rows),
                              data.targets.index_select(0, rows), data.kind, global_batch, sync, step);
    adam.step();
  }

  for (const auto& p : model.replicated_parameters()) {
    at::Tensor gathered = world.all_gather(p.tensor.detach().contiguous());
    for (int r = 1; r < world.size(); ++r) {
      EXPECT_TRUE(at::equal(gathered[r], gathered[0])) << p.name << " differs on rank " << r;
    }
  }
  // One checksum per expert: its parameters flattened and summed in double.
  const int64_t n = model_config->num_experts();
  at::Tensor checksums = at::zeros({n}, at::kDouble);
  at::Tensor holders = at::zeros({n}, at::kLong);
  for (int64_t j = 0; j < model.sharding().num_local(topo.expert_rank()); ++j) {
    const std::string prefix = "experts." + std::to_string(model.first_local_expert() + j) + ".";
    double sum = 0;
    for (const auto& p : model.expert_parameters()) {
      if (p.name.rfind(prefix, 0) == 0) sum += p.tensor.detach().to(at::kDouble).sum().item<double>();
    }
    checksums[model.first_local_expert() + j] = sum;
    holders[model.first_local_expert() + j] = 1;
  }
  at::Tensor per_rank = world.all_gather(checksums);  // [W, n]
  at::Tensor held = world.all_gather(holders);
  for (int64_t x = 0; x < n; ++x) {
    double value = 0;
    bool seen = false;
    for (int r = 0; r < world.size(); ++r) {
      if (held[r][x].item<int64_t>() == 0) continue;
      const double c = per_rank[r][x].item<double>();
      if (seen) EXPECT_EQ(c, value) << "expert " << x << " differs between its replicas";
      value = c;
      seen = true;
    }
    EXPECT_TRUE(seen) << "expert " << x << " has no owner";
    for (int64_t y = 0; y < x; ++y) {
      for (int r = 0; r < world.size(); ++r) {
        if (held[r][y].item<int64_t>()) EXPECT_NE(per_rank[r][y].item<double>(), value) << "experts " << x << ", " << y;
      }
    }
  }
  // Replica groups hold every expert exactly D times.
  EXPECT_EQ(held.sum().item<int64_t>(), n * topo.data_parallel_size);
}

}  // namespace
}  // namespace dsk
