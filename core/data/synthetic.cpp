#include "core/host_values.h"
#include "core/data/synthetic.h"

#include <cmath>
#include <string>

#include "core/error.h"
#include "core/params.h"
// core/CMakeLists.txt passes -I core before -I . to protoc, so today the
// header lands at <build>/proto/; accept both until that is settled.
#include "core/proto/config.pb.h"

namespace dsk::core {

namespace {

constexpr double kPi = 3.14159265358979323846;

[[noreturn]] void bad_field(const std::string& field, const std::string& value,
                            const std::string& why) {
  throw UsageError("config: data.synthetic." + field + " = " + value + " " + why);
}

// Per-task parameters of y_t(x) = z + sum_i sin(alpha_{t,i} z + beta_{t,i}),
// z = w_t^T x. Rows of `w` are unit vectors.
struct TaskFunctions {
  at::Tensor w;      // [T, p]
  at::Tensor alpha;  // [T, M]
  at::Tensor beta;   // [T, M]
};

TaskFunctions draw_functions(const proto::SyntheticConfig& config, uint64_t seed,
                             const at::Tensor& cluster) {
  const int64_t tasks = config.num_tasks();
  const int64_t clusters = config.num_clusters();
  const int64_t dim = config.input_dim();
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Generator gen = make_generator(seed, "data.synthetic.functions");
  at::Tensor centre = at::randn({clusters, dim}, gen, f32);
  centre.div_(centre.norm(2, {1}, true));
  // Drawn for all tasks even when task_perturbation = 0, so changing the
  // perturbation scale does not reshuffle the other draws.
  // Scaled by 1/sqrt(p) so ||jitter|| ~ 1 and task_perturbation sets the
  // angle between a task and its cluster whatever the input dimension.
  at::Tensor jitter = at::randn({tasks, dim}, gen, f32).div_(std::sqrt(static_cast<double>(dim)));
  at::Tensor w = centre.index_select(0, cluster) + config.task_perturbation() * jitter;
  w.div_(w.norm(2, {1}, true).clamp_min(1e-12));
  // alpha in [0.5, 2): frequencies high enough that the target is clearly
  // nonlinear along w, low enough to stay learnable; beta: a uniform phase.
  at::Tensor alpha = at::rand({clusters, kSyntheticTerms}, gen, f32).mul_(1.5).add_(0.5);
  at::Tensor beta = at::rand({clusters, kSyntheticTerms}, gen, f32).mul_(2 * kPi).sub_(kPi);
  return {w, alpha.index_select(0, cluster), beta.index_select(0, cluster)};
}

Dataset draw_split(const proto::SyntheticConfig& config, uint64_t seed, const TaskFunctions& f,
                   int64_t size, const std::string& name) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Generator gx = make_generator(seed, "data.synthetic." + name + ".x");
  at::Generator gn = make_generator(seed, "data.synthetic." + name + ".noise");
  at::Tensor x = at::randn({size, config.input_dim()}, gx, f32);
  at::Tensor z = x.matmul(f.w.t());  // [N, T]
  at::Tensor y = z.clone();
  // A loop over the M terms, each one [N, T] op, keeps memory at O(N T)
  // rather than materialising [N, T, M].
  for (int64_t i = 0; i < kSyntheticTerms; ++i) {
    y.add_(at::sin(z * f.alpha.select(1, i) + f.beta.select(1, i)));
  }
  // Always drawn, so noise = 0 gives the same x and the clean targets.
  at::Tensor eps = at::randn(y.sizes(), gn, f32);
  if (config.noise() > 0) y.add_(eps.mul_(config.noise()));
  Dataset data;
  data.inputs = x;
  data.targets = y;
  data.kind = TaskKind::kRegression;
  return data;
}

}  // namespace

void validate_synthetic(const proto::SyntheticConfig& c) {
  auto at_least_one = [](const std::string& field, int64_t v) {
    if (v < 1) bad_field(field, std::to_string(v), "must be >= 1");
  };
  at_least_one("num_tasks", c.num_tasks());
  at_least_one("num_clusters", c.num_clusters());
  if (c.num_clusters() > c.num_tasks()) {
    bad_field("num_clusters", std::to_string(c.num_clusters()),
              "exceeds data.synthetic.num_tasks = " + std::to_string(c.num_tasks()));
  }
  at_least_one("input_dim", c.input_dim());
  at_least_one("train_size", c.train_size());
  at_least_one("test_size", c.test_size());
  // Written as !(v >= 0) so NaN is rejected too.
  if (!(c.noise() >= 0)) bad_field("noise", std::to_string(c.noise()), "must be >= 0");
  if (!(c.task_perturbation() >= 0)) {
    bad_field("task_perturbation", std::to_string(c.task_perturbation()), "must be >= 0");
  }
}

DataSplits make_synthetic(const proto::SyntheticConfig& config, uint64_t seed) {
  validate_synthetic(config);
  at::Tensor cluster = at::arange(config.num_tasks(), at::kLong).remainder_(config.num_clusters());
  TaskFunctions f = draw_functions(config, seed, cluster);
  DataSplits splits;
  splits.train = draw_split(config, seed, f, config.train_size(), "train");
  splits.test = draw_split(config, seed, f, config.test_size(), "test");
  const std::vector<int64_t> task_cluster = host_values<int64_t>(cluster);
  splits.train.task_cluster = task_cluster;
  splits.test.task_cluster = task_cluster;
  return splits;
}

}  // namespace dsk::core
