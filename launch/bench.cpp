#include "launch/bench.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/gates/gate.h"
#include "core/proto/config.pb.h"
#include "launch/metrics.h"

namespace dsk::launch {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kBenchUsage =
    "usage: dsk bench gate [--repeats N] [--batch B] [--input-dim P] [--k K]\n"
    "\n"
    "  Per-example DSelect-k forward+backward, float32: the batched T-task gate\n"
    "  against T times the one-task gate, T in {1, 8, 32, 128}, n in {16, 128}.\n"
    "  One JSON object per (T, n) on stdout; times are medians in ms.\n";

struct BenchOptions {
  int64_t repeats = 15;
  int64_t batch = 256;
  int64_t input_dim = 64;
  int64_t k = 2;
  int64_t warmup = 3;
};

// One forward+backward of the gate on x with a fixed upstream gradient and
// the regularizers in the loss, as in training; grads cleared outside.
double time_call_ms(core::Gate& gate, const at::Tensor& x, const at::Tensor& upstream) {
  for (const auto& p : gate.parameters()) p.tensor.mutable_grad().reset();
  const auto start = Clock::now();
  core::GateOutput out = gate.forward(x, /*training=*/true);
  at::Tensor loss = (out.weights * upstream).sum() + 1e-3 * out.entropy_sum + out.nonpow2_penalty_sum;
  loss.backward();
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double median_ms(core::Gate& gate, const at::Tensor& x, const at::Tensor& upstream, const BenchOptions& o) {
  for (int64_t i = 0; i < o.warmup; ++i) time_call_ms(gate, x, upstream);
  std::vector<double> times;
  for (int64_t i = 0; i < o.repeats; ++i) times.push_back(time_call_ms(gate, x, upstream));
  std::sort(times.begin(), times.end());
  const size_t mid = times.size() / 2;
  return times.size() % 2 ? times[mid] : 0.5 * (times[mid - 1] + times[mid]);
}

int bench_gate(const BenchOptions& o) {
  proto::GateConfig config;
  config.set_type(proto::GateConfig::DSELECT_K);
  config.set_k(static_cast<int32_t>(o.k));
  config.set_per_example(true);
  const int64_t threads = at::get_num_threads();
  at::Generator gen = core::make_generator(1, "bench.x");
  at::Tensor x = at::randn({o.batch, o.input_dim}, gen);
  for (int64_t n : {16, 128}) {
    auto one = core::make_gate(config, core::GateShape{1, n, o.input_dim}, 1);
    at::Tensor up1 = at::randn({1, o.batch, n}, gen);
    const double t1 = median_ms(*one, x, up1, o);
    for (int64_t tasks : {1, 8, 32, 128}) {
      auto all = core::make_gate(config, core::GateShape{tasks, n, o.input_dim}, 1);
      at::Tensor up = at::randn({tasks, o.batch, n}, gen);
      const double tt = median_ms(*all, x, up, o);
      const double looped = static_cast<double>(tasks) * t1;
      JsonObject record;
      record.add("bench", std::string("gate"))
          .add("gate", std::string("dselect_k_per_example"))
          .add("tasks", tasks)
          .add("num_experts", n)
          .add("k", o.k)
          .add("batch", o.batch)
          .add("input_dim", o.input_dim)
          .add("dtype", std::string("float32"))
          .add("threads", threads)
          .add("repeats", o.repeats)
          .add("one_task_ms", t1)
          .add("batched_ms", tt)
          .add("tasks_times_one_task_ms", looped)
          .add("speedup", looped / tt)
          .add("batched_ms_per_task", tt / static_cast<double>(tasks));
      std::printf("%s\n", record.str().c_str());
      std::fflush(stdout);
    }
  }
  return 0;
}

int64_t positive(const std::string& flag, const char* text) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || v < 1) throw UsageError("dsk bench: " + flag + " must be a positive integer");
  return v;
}

}  // namespace

int run_bench(int argc, char** argv) {
  try {
    if (argc < 3 || std::string(argv[2]) == "--help" || std::string(argv[2]) == "-h") {
      std::fputs(kBenchUsage, argc < 3 ? stderr : stdout);
      return argc < 3 ? 2 : 0;
    }
    const std::string what = argv[2];
    if (what != "gate") throw UsageError("dsk bench: unknown benchmark '" + what + "' (known: gate)");
    BenchOptions o;
    for (int i = 3; i < argc; ++i) {
      const std::string flag = argv[i];
      if (i + 1 >= argc) throw UsageError("dsk bench: " + flag + " needs a value");
      const char* value = argv[++i];
      if (flag == "--repeats") o.repeats = positive(flag, value);
      else if (flag == "--batch") o.batch = positive(flag, value);
      else if (flag == "--input-dim") o.input_dim = positive(flag, value);
      else if (flag == "--k") o.k = positive(flag, value);
      else throw UsageError("dsk bench: unknown argument '" + flag + "'");
    }
    return bench_gate(o);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "dsk: error: %s\n", e.what());
    return 2;
  }
}

}  // namespace dsk::launch
