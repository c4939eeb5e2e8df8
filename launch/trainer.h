#pragma once
// The training loop of `dsk train`.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/proto/config.pb.h"
#include "dist/communicator.h"

namespace dsk::launch {

struct EvalResult {
  int64_t examples = 0;
  std::vector<double> task_losses;    // mean per example
  std::vector<double> task_accuracy;  // classification only
};

struct TrainResult {
  int64_t steps = 0;
  std::vector<double> step_losses;  // global loss of every step (all ranks)
  EvalResult final_eval;
};

struct TrainOptions {
  std::string out_dir;  // metrics.jsonl goes here (rank 0); empty = none
  bool progress = true; // rank-0 progress lines on stdout
};

// Trains on `data` as the config says, over `world`, and evaluates on the
// test split at the end (and every trainer.eval_every steps). Collective:
// every rank of `world` calls it with the same config and data.
TrainResult train(const proto::Config& config, const core::DataSplits& data, dist::Communicator& world,
                  const TrainOptions& options);

}  // namespace dsk::launch
