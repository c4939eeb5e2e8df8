// The `dsk` command. Exit codes: 0 success, 2 usage/config/data error (one
// line on stderr naming the file and field), 1 runtime failure.
#include <ATen/Parallel.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/error.h"
#include "dist/mpi/mpi_communicator.h"
#include "launch/bench.h"
#include "launch/config.h"
#include "launch/env.h"
#include "launch/trainer.h"
#include "models/mmoe.h"

namespace {

constexpr const char* kUsage =
    "usage: dsk train --config FILE [--set PATH=VALUE]... [--out DIR]\n"
    "\n"
    "  --config FILE      job config, protobuf text format (configs/*.pbtxt)\n"
    "  --set PATH=VALUE   override one config field by its path, e.g. --set trainer.steps=100\n"
    "  --out DIR          run directory: metrics.jsonl, config.pbtxt (rank 0)\n"
    "\n"
    "Run under mpirun/srun for several ranks; run directly for a world of one.\n";

struct HelpRequested {};

struct TrainArgs {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string out_dir;
};

TrainArgs parse_train_args(int argc, char** argv) {
  TrainArgs args;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw dsk::UsageError("dsk train: " + flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") throw HelpRequested();
    if (flag == "--config") args.config_path = value();
    else if (flag == "--set") args.overrides.push_back(value());
    else if (flag == "--out") args.out_dir = value();
    else throw dsk::UsageError("dsk train: unknown argument '" + flag + "' (see dsk --help)");
  }
  if (args.config_path.empty()) throw dsk::UsageError("dsk train: --config FILE is required");
  return args;
}

struct Failure {
  int code = 0;
  std::string message;
};

// Setup failures (config, data) are usually seen by every rank alike. The
// ranks agree on the outcome so that exactly one line is printed (by the
// lowest failing rank) and every rank exits with the same code.
int agree_on_failure(dsk::dist::Communicator& world, const Failure& failure) {
  at::Tensor first_failing = at::tensor({failure.code != 0 ? world.rank() : world.size()}, at::kLong);
  world.all_reduce(first_failing, dsk::dist::ReduceOp::kMin);
  at::Tensor worst_code = at::tensor({static_cast<int64_t>(failure.code)}, at::kLong);
  world.all_reduce(worst_code, dsk::dist::ReduceOp::kMax);
  if (first_failing.item<int64_t>() == world.rank()) {
    std::fprintf(stderr, "dsk: error: %s\n", failure.message.c_str());
  }
  return static_cast<int>(worst_code.item<int64_t>());
}

int run_train(int argc, char** argv, const dsk::launch::LaunchEnv& env) {
  std::optional<dsk::dist::MpiRuntime> mpi;
  std::unique_ptr<dsk::dist::Communicator> world;
  Failure failure;
  dsk::proto::Config config;
  dsk::core::DataSplits data;
  TrainArgs args;

  try {
    args = parse_train_args(argc, argv);
  } catch (const HelpRequested&) {
    std::fputs(kUsage, stdout);
    return 0;
  } catch (const dsk::UsageError& e) {
    failure = {2, e.what()};
  }
  if (env.under_launcher()) mpi.emplace(&argc, &argv);
  if (failure.code == 0) {
    try {
      config = dsk::launch::load_config(args.config_path, args.overrides);
    } catch (const dsk::UsageError& e) {
      failure = {2, e.what()};
    }
  }
  const double timeout_s = failure.code == 0 ? config.parallel().collective_timeout_s() : 300.0;
  world = mpi ? mpi->world(timeout_s) : dsk::dist::make_local_communicator();

  if (failure.code == 0) {
    try {
      at::set_num_threads(env.threads_per_rank(config.trainer().threads_per_rank()));
      data = dsk::core::load_data(config.data());
      dsk::models::validate_model_config(config.model(), dsk::models::model_shape_of(data.train));
      const int experts_parallel = config.parallel().expert_parallel_size();
      if (experts_parallel > world->size() || (experts_parallel > 0 && world->size() % experts_parallel != 0)) {
        throw dsk::UsageError(args.config_path + ": parallel.expert_parallel_size = " +
                              std::to_string(experts_parallel) + " must divide the world size " +
                              std::to_string(world->size()) + " (0 = all ranks)");
      }
      if (!args.out_dir.empty() && world->rank() == 0) {
        std::error_code ec;
        std::filesystem::create_directories(args.out_dir, ec);
        if (ec) throw dsk::UsageError("--out " + args.out_dir + ": cannot create the directory: " + ec.message());
        std::FILE* f = std::fopen((args.out_dir + "/config.pbtxt").c_str(), "w");
        if (f == nullptr) throw dsk::UsageError("--out " + args.out_dir + ": directory is not writable");
        const std::string text = config.DebugString();
        std::fwrite(text.data(), 1, text.size(), f);
        std::fclose(f);
      }
    } catch (const dsk::UsageError& e) {
      failure = {2, e.what()};
    } catch (const std::exception& e) {
      failure = {1, e.what()};
    }
  }
  if (int code = agree_on_failure(*world, failure); code != 0) return code;

  try {
    dsk::launch::TrainOptions options;
    options.out_dir = args.out_dir;
    options.stall_rank = env.test_stall_rank;
    options.stall_step = env.test_stall_step;
    dsk::launch::train(config, data, *world, options);
  } catch (const dsk::UsageError& e) {
    // Setup validated the config against the data and the world, so this
    // is unexpected; peers may be inside a collective: end the whole job.
    std::fprintf(stderr, "dsk: error: %s\n", e.what());
    if (mpi && world->size() > 1) dsk::dist::MpiRuntime::abort_job(2);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsk: error: rank %d: %s\n", world->rank(), e.what());
    if (mpi && world->size() > 1) dsk::dist::MpiRuntime::abort_job(1);
    return 1;
  }
  world.reset();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const dsk::launch::LaunchEnv env = dsk::launch::detect_launch_env();
  const std::string command = argv[1];
  if (command == "train") return run_train(argc, argv, env);
  if (command == "bench") return dsk::launch::run_bench(argc, argv);
  std::fprintf(stderr, "dsk: error: unknown command '%s' (see dsk --help)\n", command.c_str());
  return 2;
}
