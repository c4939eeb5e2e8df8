// The `dsk` command. Exit codes: 0 success, 2 usage/config/data/checkpoint
// error (one line on stderr naming the file and field), 1 runtime failure.
#include <ATen/Parallel.h>
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/error.h"
#include "dist/agreement.h"
#include "dist/device_communicator.h"
#include "dist/mpi/mpi_communicator.h"
#include "launch/bench.h"
#include "launch/ckpt_inspect.h"
#include "launch/config.h"
#include "launch/env.h"
#include "launch/trainer.h"
#include "models/mmoe.h"

#ifdef DSK_HAVE_NCCL
#include "dist/nccl/nccl_communicator.h"
#endif

namespace {

constexpr const char* kUsage =
    "usage: dsk train --config FILE [--set PATH=VALUE]... [--out DIR] [--resume PATH]\n"
    "       dsk ckpt inspect PATH\n"
    "       dsk bench gate\n"
    "\n"
    "  --config FILE      job config, protobuf text format (configs/*.pbtxt)\n"
    "  --set PATH=VALUE   override one config field by its path, e.g. --set trainer.steps=100\n"
    "  --out DIR          run directory: metrics.jsonl, config.pbtxt, ckpt/ (rank 0 writes)\n"
    "  --resume PATH      continue from a run directory or one checkpoint, on any number of ranks\n"
    "\n"
    "Run under mpirun/srun for several ranks; run directly for a world of one.\n"
    "SIGTERM/SIGINT: every rank stops at the next step boundary, saves a checkpoint (with --out), exits 0.\n";

volatile std::sig_atomic_t g_stop_requested = 0;

extern "C" void request_stop(int) { g_stop_requested = 1; }

struct HelpRequested {};

struct TrainArgs {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string out_dir;
  std::string resume;
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
    else if (flag == "--resume") args.resume = value();
    else throw dsk::UsageError("dsk train: unknown argument '" + flag + "' (see dsk --help)");
  }
  if (args.config_path.empty()) throw dsk::UsageError("dsk train: --config FILE is required");
  return args;
}

// Everything that can be wrong with the job before it trains: the same on
// every rank, so it is checked before any collective but reported through
// run_agreed (one line, one exit code).
void prepare(const TrainArgs& args, const dsk::launch::LaunchEnv& env, dsk::dist::Communicator& world,
             dsk::proto::Config& config, dsk::core::DataSplits& data) {
  config = dsk::launch::load_config(args.config_path, args.overrides);
  at::set_num_threads(env.threads_per_rank(config.trainer().threads_per_rank()));
  if (config.trainer().device() == "cuda" && world.size() > 1) {
#ifdef DSK_HAVE_NCCL
    if (dsk::dist::cuda_device_count() < 1) {
      throw dsk::UsageError(args.config_path + ": trainer.device = cuda, but no CUDA device is visible to this rank");
    }
#else
    throw dsk::UsageError(args.config_path +
                          ": trainer.device = cuda with several ranks needs NCCL: rebuild with -DDSK_WITH_NCCL=ON");
#endif
  }
  if (config.trainer().checkpoint_every() > 0 && args.out_dir.empty()) {
    throw dsk::UsageError(args.config_path + ": trainer.checkpoint_every is set but there is no --out DIR to save into");
  }
  const int experts_parallel = config.parallel().expert_parallel_size();
  if (experts_parallel > world.size() || (experts_parallel > 0 && world.size() % experts_parallel != 0)) {
    throw dsk::UsageError(args.config_path + ": parallel.expert_parallel_size = " + std::to_string(experts_parallel) +
                          " must divide the world size " + std::to_string(world.size()) + " (0 = all ranks)");
  }
  data = dsk::core::load_data(config.data());
  dsk::models::validate_model_config(config.model(), dsk::models::model_shape_of(data.train));
  if (!args.out_dir.empty() && world.rank() == 0) {
    std::error_code ec;
    std::filesystem::create_directories(args.out_dir, ec);
    if (ec) throw dsk::UsageError("--out " + args.out_dir + ": cannot create the directory: " + ec.message());
    std::FILE* f = std::fopen((args.out_dir + "/config.pbtxt").c_str(), "w");
    if (f == nullptr) throw dsk::UsageError("--out " + args.out_dir + ": directory is not writable");
    const std::string text = config.DebugString();
    std::fwrite(text.data(), 1, text.size(), f);
    std::fclose(f);
  }
}

int run_train(int argc, char** argv, const dsk::launch::LaunchEnv& env) {
  TrainArgs args;
  std::string usage_error;
  try {
    args = parse_train_args(argc, argv);
  } catch (const HelpRequested&) {
    std::fputs(kUsage, stdout);
    return 0;
  } catch (const dsk::UsageError& e) {
    usage_error = e.what();
  }
  std::signal(SIGTERM, request_stop);
  std::signal(SIGINT, request_stop);

  std::optional<dsk::dist::MpiRuntime> mpi;
  if (env.under_launcher()) mpi.emplace(&argc, &argv);
  // The deadline is known only once the config is read; setup failures are
  // agreed with the default one.
  std::unique_ptr<dsk::dist::Communicator> world = mpi ? mpi->world(300.0) : dsk::dist::make_local_communicator();
  dsk::proto::Config config;
  dsk::core::DataSplits data;
  try {
    dsk::dist::run_agreed(*world, [&] {
      if (!usage_error.empty()) throw dsk::UsageError(usage_error);
      prepare(args, env, *world, config, data);
    });
    const double timeout_s = config.parallel().collective_timeout_s();
    int cuda_device = 0;
    if (mpi) {
      world = mpi->world(timeout_s);
#ifdef DSK_HAVE_NCCL
      if (config.trainer().device() == "cuda") {
        // One GPU per local rank; rows and gradients on NCCL, host-side
        // exchanges on MPI (dist/device_communicator.h).
        cuda_device = env.local_rank % dsk::dist::cuda_device_count();
        auto gpu = dsk::dist::make_nccl_communicator(*world, cuda_device, timeout_s, "world");
        world = dsk::dist::make_device_dispatch_communicator(std::move(world), std::move(gpu));
      }
#endif
    }

    dsk::launch::TrainOptions options;
    options.out_dir = args.out_dir;
    options.resume = args.resume;
    options.stop_requested = &g_stop_requested;
    options.stall_rank = env.test_stall_rank;
    options.stall_step = env.test_stall_step;
    options.pause_in_save_rank = env.test_pause_in_save_rank;
    options.cuda_device = cuda_device;
    dsk::launch::train(config, data, *world, options);
  } catch (const dsk::dist::PeerFailure& e) {
    return e.exit_code();  // the failing peer printed the message
  } catch (const dsk::UsageError& e) {
    std::fprintf(stderr, "dsk: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    // Peers may be inside a collective this rank will never join: end them.
    std::fprintf(stderr, "dsk: error: rank %d: %s\n", world->rank(), e.what());
    if (mpi && world->size() > 1) dsk::dist::MpiRuntime::abort_job(1);
    return 1;
  }
  world.reset();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Keep large blocks in the heap. Training (and dsk bench) allocates the
  // same large tensors every step; with glibc's defaults any block over the
  // mmap threshold (128 KB, raised dynamically only up to 32 MB) is mmapped,
  // page-faulted in and munmapped on every step, and a freed heap top is
  // trimmed back to the OS, which costs more than the math on them.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const dsk::launch::LaunchEnv env = dsk::launch::detect_launch_env();
  const std::string command = argv[1];
  if (command == "train") return run_train(argc, argv, env);
  if (command == "bench") return dsk::launch::run_bench(argc, argv);
  if (command == "ckpt") return dsk::launch::run_ckpt(argc, argv);
  std::fprintf(stderr, "dsk: error: unknown command '%s' (see dsk --help)\n", command.c_str());
  return 2;
}
