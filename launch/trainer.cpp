#include "launch/trainer.h"

#include <chrono>
#include <cstdio>
#include <thread>

#include "core/adam.h"
#include "core/checkpoint/checkpoint.h"
#include "core/data/sampler.h"
#include "dist/agreement.h"
#include "dist/dist_checkpoint.h"
#include "core/gates/gate_stats.h"
#include "core/host_values.h"
#include "dist/grad_sync.h"
#include "dist/topology.h"
#include "launch/metrics.h"
#include "models/mmoe.h"

namespace dsk::launch {
namespace {

using Clock = std::chrono::steady_clock;


std::string format_duration(double seconds) {
  char text[32];
  const int s = static_cast<int>(seconds + 0.5);
  if (s >= 3600) std::snprintf(text, sizeof(text), "%dh%02dm", s / 3600, (s / 60) % 60);
  else std::snprintf(text, sizeof(text), "%dm%02ds", s / 60, s % 60);
  return text;
}

std::string format_list(const std::vector<double>& values, const char* format) {
  std::string out = "[";
  char text[32];
  for (size_t i = 0; i < values.size(); ++i) {
    std::snprintf(text, sizeof(text), format, values[i]);
    out += (i ? ", " : "") + std::string(text);
  }
  return out + "]";
}

std::string format_list(const std::vector<int64_t>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + "]";
}

// Every rank takes ceil(local/eval_batch) batches of the same global count,
// so the expert group's all-to-alls pair up even where slices differ by one.
EvalResult evaluate(models::MmoeModel& model, const core::Dataset& test, int64_t eval_batch,
                    dist::Communicator& world, const at::Device& device) {
  at::NoGradGuard no_grad;
  const int64_t num_tasks = test.num_tasks();
  const auto [first, count] = core::rank_slice(test.size(), world.rank(), world.size());
  const int64_t longest_slice = (test.size() + world.size() - 1) / world.size();
  const int64_t batches = (longest_slice + eval_batch - 1) / eval_batch;
  // [loss sums (T), correct counts (T)] in double so sums are exact enough.
  at::Tensor totals = at::zeros({2 * num_tasks}, at::kDouble);
  for (int64_t b = 0; b < batches; ++b) {
    const int64_t begin = std::min(count, b * eval_batch);
    const int64_t rows = std::min(count, begin + eval_batch) - begin;
    at::Tensor x = test.input_slice(first + begin, rows).to(device);
    at::Tensor y = test.targets.narrow(0, first + begin, rows).to(device);
    auto out = model.forward(x, /*training=*/false);
    totals.narrow(0, 0, num_tasks).add_(models::task_loss_sums(out.predictions, y, test.kind).to(at::kCPU, at::kDouble));
    if (test.kind == core::TaskKind::kClassification) {
      totals.narrow(0, num_tasks, num_tasks)
          .add_(models::task_correct_counts(out.predictions, y).to(at::kCPU, at::kDouble));
    }
  }
  world.all_reduce(totals, dist::ReduceOp::kSum);
  EvalResult result;
  result.examples = test.size();
  const std::vector<double> sums = core::host_values<double>(totals);
  for (int64_t t = 0; t < num_tasks; ++t) {
    result.task_losses.push_back(sums[t] / static_cast<double>(test.size()));
    if (test.kind == core::TaskKind::kClassification) {
      result.task_accuracy.push_back(sums[num_tasks + t] / static_cast<double>(test.size()));
    }
  }
  return result;
}

struct RoutingSummary {
  std::vector<double> tokens_per_expert;  // pairs routed to each expert, whole global batch
  double imbalance = 0;                    // max / mean of tokens_per_expert
  int64_t dropped_rows = 0;
  std::vector<double> nonzero_experts;    // per task, mean over the global batch
  std::vector<double> binary_fraction;    // per task; NaN (null) for gates without selectors
  std::vector<std::vector<double>> expert_share;  // [T][n]
};

// Gate and routing statistics of one step over the global batch: each
// rank's figures are weighted by its rows and summed in one all-reduce.
RoutingSummary summarize_routing(const models::MmoeModel::Output& out, int64_t local_rows, int64_t global_batch,
                                 dist::Communicator& world) {
  at::NoGradGuard no_grad;
  // Host tensors: a few hundred numbers, reduced over MPI whatever the device.
  const core::GateStats stats = core::gate_statistics(out.gate);
  const at::Tensor weights = out.gate.weights.detach().to(at::kCPU, at::kDouble);  // [T, B, n]
  const int64_t tasks = weights.size(0), n = weights.size(2);
  const double rows = static_cast<double>(local_rows);
  at::Tensor packet = at::cat({
      (rows > 0 ? stats.mean_nonzero_experts.cpu() * rows : at::zeros({tasks}, at::kDouble)),
      (rows > 0 ? stats.binary_selector_fraction.cpu() * rows : at::zeros({tasks}, at::kDouble)),
      weights.sum(1).flatten(),
      out.dispatch.rows_per_expert.to(at::kCPU, at::kDouble),
      at::tensor({static_cast<double>(out.dispatch.dropped_rows)}, at::kDouble)});
  world.all_reduce(packet, dist::ReduceOp::kSum);
  RoutingSummary summary;
  const std::vector<double> v = core::host_values<double>(packet);
  const double gb = static_cast<double>(global_batch);
  for (int64_t t = 0; t < tasks; ++t) {
    summary.nonzero_experts.push_back(v[t] / gb);
    summary.binary_fraction.push_back(v[tasks + t] / gb);
    std::vector<double> share(v.begin() + 2 * tasks + t * n, v.begin() + 2 * tasks + (t + 1) * n);
    double total = 0;
    for (double s : share) total += s;
    for (double& s : share) s = total > 0 ? s / total : 0.0;
    summary.expert_share.push_back(share);
  }
  const int64_t tokens_at = 2 * tasks + tasks * n;
  summary.tokens_per_expert.assign(v.begin() + tokens_at, v.begin() + tokens_at + n);
  double max_tokens = 0, sum_tokens = 0;
  for (double t : summary.tokens_per_expert) {
    max_tokens = std::max(max_tokens, t);
    sum_tokens += t;
  }
  summary.imbalance = sum_tokens > 0 ? max_tokens / (sum_tokens / static_cast<double>(n)) : 0.0;
  summary.dropped_rows = static_cast<int64_t>(v[tokens_at + n]);
  return summary;
}

}  // namespace

StepOutput compute_gradients(models::MmoeModel& model, const proto::GateConfig& gate, const at::Tensor& x,
                             const at::Tensor& y, core::TaskKind kind, int64_t global_batch,
                             dist::GradientSync& sync, int64_t train_step) {
  StepOutput step;
  step.forward = model.forward(x, /*training=*/true);
  step.task_loss_sums = models::task_loss_sums(step.forward.predictions, y, kind);
  step.regularizer = models::regularizer_share(step.forward.gate, gate, x.size(0), global_batch, train_step);
  at::Tensor loss = step.task_loss_sums.sum() / static_cast<double>(global_batch) + step.regularizer;
  loss.backward();
  sync.all_reduce_sum();
  return step;
}

TrainResult train(const proto::Config& config, const core::DataSplits& data, dist::Communicator& world,
                  const TrainOptions& options) {
  const auto& tc = config.trainer();
  const bool leader = world.rank() == 0;
  const int64_t global_batch = tc.global_batch_size();
  const int64_t num_tasks = data.train.num_tasks();

  dist::Topology topology = dist::make_topology(world, config.parallel().expert_parallel_size());
  models::MmoeModel model(config.model(), models::model_shape_of(data.train), tc.seed(), *topology.expert_group);
  // Parameters are created on the CPU (the same bits everywhere) and then
  // moved, before the optimizer and the gradient buckets take their shapes.
  const at::Device device = tc.device() == "cuda" ? at::Device(at::kCUDA, options.cuda_device) : at::Device(at::kCPU);
  model.to(device);

  const core::NamedTensors replicated = model.replicated_parameters();
  const core::NamedTensors experts = model.expert_parameters();
  core::NamedTensors all_params = replicated;
  all_params.insert(all_params.end(), experts.begin(), experts.end());
  core::Adam adam(all_params, core::AdamOptions{tc.learning_rate(), tc.adam_beta1(), tc.adam_beta2(), tc.adam_eps()});
  dist::GradientSync sync(replicated, world, experts, *topology.replica_group);

  // Parameters and their Adam moments ("opt.<name>.exp_avg"), by global name.
  const core::NamedTensors optimizer_state = adam.state();
  auto with_optimizer_state = [&](const core::NamedTensors& params) {
    core::NamedTensors out = params;
    for (const auto& p : params) {
      for (const auto& s : optimizer_state) {
        if (s.name.size() > p.name.size() && s.name.compare(0, p.name.size(), p.name) == 0 &&
            s.name[p.name.size()] == '.') {
          out.push_back({"opt." + s.name, s.tensor});
        }
      }
    }
    return out;
  };
  const core::NamedTensors replicated_state = with_optimizer_state(replicated);
  const core::NamedTensors expert_state = with_optimizer_state(experts);

  int64_t first_step = 1;
  if (!options.resume.empty()) {
    const auto load_begin = Clock::now();
    const std::string dir = dist::agree_on_checkpoint(world, options.resume, config);
    proto::Manifest manifest;
    dist::run_agreed(world, [&] {
      manifest = core::read_manifest(dir);
      core::load_tensors(dir, manifest, replicated_state);
      core::load_tensors(dir, manifest, expert_state);
      adam.set_step_count(manifest.optimizer_step());
    });
    first_step = manifest.step() + 1;
    if (leader && options.progress) {
      std::printf("dsk: resumed from %s: step %lld, saved by %d ranks (E = %d), loaded in %.2f s\n", dir.c_str(),
                  static_cast<long long>(manifest.step()), manifest.layout().world_size(),
                  manifest.layout().expert_parallel_size(),
                  std::chrono::duration<double>(Clock::now() - load_begin).count());
    }
  }
  const std::string checkpoint_root = options.out_dir.empty() ? std::string() : options.out_dir + "/ckpt";
  auto save = [&](int64_t step) {
    dist::CheckpointState state;
    state.step = step;
    state.sample_index = step * global_batch;
    state.epoch = state.sample_index / data.train.size();
    state.optimizer_step = adam.step_count();
    state.learning_rate = adam.learning_rate();
    const auto begin = Clock::now();
    const std::string dir = dist::save_checkpoint(checkpoint_root, config, topology, state, replicated_state,
                                                  expert_state, {tc.keep_checkpoints(), options.pause_in_save_rank});
    if (leader && options.progress) {
      std::printf("dsk: checkpoint %s (%.2f s)\n", dir.c_str(),
                  std::chrono::duration<double>(Clock::now() - begin).count());
      std::fflush(stdout);
    }
  };

  MetricsLog metrics(leader ? options.out_dir : std::string());
  if (leader && options.progress) {
    std::printf("dsk: world %d = %d expert-parallel x %d replica%s; %lld experts\n", world.size(),
                topology.expert_parallel_size, topology.data_parallel_size, topology.data_parallel_size == 1 ? "" : "s",
                static_cast<long long>(config.model().num_experts()));
    // The placement follows from the layout (dist/topology.h): world rank r
    // is expert rank r % E and holds that shard's experts.
    for (int r = 0; r < world.size(); ++r) {
      const int expert_rank = r % topology.expert_parallel_size;
      std::printf("dsk: rank %d (expert rank %d, replica %d) owns %s\n", r, expert_rank,
                  r / topology.expert_parallel_size, model.sharding().describe_shard(expert_rank).c_str());
    }
    std::printf("dsk: %lld train / %lld test examples, %lld tasks, global batch %lld, %lld steps\n",
                static_cast<long long>(data.train.size()), static_cast<long long>(data.test.size()),
                static_cast<long long>(num_tasks), static_cast<long long>(global_batch),
                static_cast<long long>(tc.steps()));
    std::fflush(stdout);
  }

  core::EpochSampler sampler(data.train.size(), tc.seed());
  const auto [slice_first, slice_rows] = core::rank_slice(global_batch, world.rank(), world.size());
  TrainResult result;
  const auto start = Clock::now();
  auto last_log = start;
  int64_t last_log_step = first_step - 1;
  double not_training_s = 0;  // eval and checkpoint time since the last log, left out of examples/s

  result.steps = first_step - 1;
  for (int64_t step = first_step; step <= tc.steps(); ++step) {
    if (step == options.stall_step && world.rank() == options.stall_rank) {
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    }
    const int64_t cursor = (step - 1) * global_batch;
    at::Tensor rows = sampler.indices(cursor + slice_first, slice_rows);
    at::Tensor x = data.train.input_rows(rows).to(device);
    at::Tensor y = data.train.targets.index_select(0, rows).to(device);

    adam.zero_grad();
    StepOutput step_out = compute_gradients(model, config.model().gate(), x, y, data.train.kind, global_batch, sync, step);
    adam.step();
    const at::Tensor& task_sums = step_out.task_loss_sums;
    const at::Tensor& reg = step_out.regularizer;
    const auto& out = step_out.forward;

    const bool log_now = step % tc.log_every() == 0 || step == tc.steps() || step == 1;
    // The loss of every step is reduced: it is one tiny message and makes
    // the whole-run loss curve comparable across layouts.
    // The stop flag rides along, so every rank sees the same decision.
    const double stop_flag = options.stop_requested != nullptr && *options.stop_requested ? 1.0 : 0.0;
    at::Tensor summary = at::cat({task_sums.detach().to(at::kCPU, at::kDouble),
                                  reg.detach().to(at::kCPU, at::kDouble).reshape({1}), at::tensor({stop_flag}, at::kDouble)});
    world.all_reduce(summary, dist::ReduceOp::kSum);
    const std::vector<double> s = core::host_values<double>(summary);
    std::vector<double> task_losses(s.begin(), s.begin() + num_tasks);
    double total = s[num_tasks];
    for (double& v : task_losses) {
      v /= static_cast<double>(global_batch);
      total += v;
    }
    result.step_losses.push_back(total);

    if (log_now) {
      at::Tensor routed = world.all_gather(
          at::tensor(std::vector<int64_t>{out.dispatch.rows_sent(), out.dispatch.rows_received()}, at::kLong));
      const RoutingSummary routing = summarize_routing(out, slice_rows, global_batch, world);
      const auto now = Clock::now();
      const double elapsed = std::chrono::duration<double>(now - last_log).count() - not_training_s;
      not_training_s = 0;
      const double examples_per_s =
          elapsed > 0 ? static_cast<double>((step - last_log_step) * global_batch) / elapsed : 0.0;
      const double so_far = std::chrono::duration<double>(now - start).count();
      const double eta = so_far / static_cast<double>(step - first_step + 1) * static_cast<double>(tc.steps() - step);
      last_log = now;
      last_log_step = step;
      if (leader) {
        const std::vector<int64_t> sent = core::host_values<int64_t>(routed.select(1, 0));
        const std::vector<int64_t> received = core::host_values<int64_t>(routed.select(1, 1));
        if (options.progress) {
          std::printf("step %lld/%lld  loss %.4f  tasks %s  %.0f ex/s  rows sent/rank %s  ETA %s\n",
                      static_cast<long long>(step), static_cast<long long>(tc.steps()), total,
                      format_list(task_losses, "%.4f").c_str(), examples_per_s, format_list(sent).c_str(),
                      format_duration(eta).c_str());
          std::fflush(stdout);
        }
        metrics.write(JsonObject()
                          .add("step", step)
                          .add("loss", total)
                          .add("task_losses", task_losses)
                          .add("lr", adam.learning_rate())
                          .add("examples_per_s", examples_per_s)
                          .add("rows_sent", sent)
                          .add("rows_received", received)
                          .add("tokens_per_expert", routing.tokens_per_expert)
                          .add("expert_imbalance", routing.imbalance)
                          .add("dropped_rows", routing.dropped_rows)
                          .add("gate_nonzero_experts", routing.nonzero_experts)
                          .add("gate_binary_fraction", routing.binary_fraction)
                          .add("gate_expert_share", routing.expert_share));
      }
    }

    result.steps = step;
    const bool stop = s[num_tasks + 1] > 0;
    if (stop) {
      if (!checkpoint_root.empty()) save(step);
      if (leader) {
        std::printf("dsk: stopped at step %lld on a signal%s\n", static_cast<long long>(step),
                    checkpoint_root.empty() ? " (no --out: nothing saved)" : "");
        std::fflush(stdout);
      }
      result.stopped = true;
      break;
    }
    const bool eval_now = (tc.eval_every() > 0 && step % tc.eval_every() == 0) || step == tc.steps();
    const auto pause_begin = Clock::now();
    if (eval_now) {
      EvalResult eval = evaluate(model, data.test, tc.eval_batch_size(), world, device);
      if (leader) {
        JsonObject record;
        record.add("step", step).add("split", std::string("test"));
        if (!eval.task_accuracy.empty()) record.add("task_accuracy", eval.task_accuracy);
        record.add("task_losses", eval.task_losses).add("examples", eval.examples);
        metrics.write(record);
        if (options.progress) {
          std::printf("eval step %lld: test task_losses %s", static_cast<long long>(step),
                      format_list(eval.task_losses, "%.4f").c_str());
          if (!eval.task_accuracy.empty()) std::printf("  task_accuracy %s", format_list(eval.task_accuracy, "%.4f").c_str());
          std::printf("  (%lld examples)\n", static_cast<long long>(eval.examples));
          std::fflush(stdout);
        }
      }
      if (step == tc.steps()) result.final_eval = eval;
    }
    const int64_t every = tc.checkpoint_every();
    if (every > 0 && !checkpoint_root.empty() && (step % every == 0 || step == tc.steps())) save(step);
    not_training_s += std::chrono::duration<double>(Clock::now() - pause_begin).count();
  }
  // Resumed at (or past) the last step: nothing trained; save so the
  // checkpoint is rewritten under this layout (as a resharding tool).
  if (first_step > tc.steps() && tc.checkpoint_every() > 0 && !checkpoint_root.empty()) save(first_step - 1);
  return result;
}

}  // namespace dsk::launch
