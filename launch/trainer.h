#pragma once
// The training loop of `dsk train`.
#include <csignal>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/proto/config.pb.h"
#include "dist/communicator.h"
#include "dist/grad_sync.h"
#include "models/mmoe.h"

namespace dsk::launch {

struct EvalResult {
  int64_t examples = 0;
  std::vector<double> task_losses;    // mean per example
  std::vector<double> task_accuracy;  // classification only
};

struct TrainResult {
  int64_t steps = 0;           // last step trained
  bool stopped = false;        // ended early on a stop request
  std::vector<double> step_losses;  // global loss of every step (all ranks)
  EvalResult final_eval;
};

struct TrainOptions {
  std::string out_dir;  // metrics.jsonl goes here (rank 0); empty = none
  bool progress = true; // rank-0 progress lines on stdout
  // Test hook: world rank `stall_rank` sleeps forever at step `stall_step`
  // instead of entering its collectives (see LaunchEnv). -1 = off.
  int stall_rank = -1;
  int64_t stall_step = -1;
  // A run directory or checkpoint to continue from; empty = fresh start.
  std::string resume;
  // Set (by a signal handler) on any rank: all ranks stop at the same step
  // boundary, save a checkpoint and return.
  const volatile std::sig_atomic_t* stop_requested = nullptr;
  // CUDA ordinal for trainer.device = cuda (from the launcher's local rank).
  int cuda_device = 0;
  // Test hook: this world rank pauses forever in the middle of a save.
  int pause_in_save_rank = -1;
};

struct StepOutput {
  at::Tensor task_loss_sums;  // [T], this rank's rows
  at::Tensor regularizer;     // this rank's share of the regularizer term
  models::MmoeModel::Output forward;
};

// Forward, backward and gradient sync of one step on this rank's rows
// (x, y) of a global batch of `global_batch` rows; no optimizer update.
// Afterwards every parameter's .grad() is the gradient of the one-process
// loss on the whole global batch (docs/architecture.md). Collective.
// `train_step` (1-based) sets the entropy-regularizer schedule.
StepOutput compute_gradients(models::MmoeModel& model, const proto::GateConfig& gate, const at::Tensor& x,
                             const at::Tensor& y, core::TaskKind kind, int64_t global_batch,
                             dist::GradientSync& sync, int64_t train_step = 1);

// Trains on `data` as the config says, over `world`, and evaluates on the
// test split at the end (and every trainer.eval_every steps). Collective:
// every rank of `world` calls it with the same config and data.
TrainResult train(const proto::Config& config, const core::DataSplits& data, dist::Communicator& world,
                  const TrainOptions& options);

}  // namespace dsk::launch
