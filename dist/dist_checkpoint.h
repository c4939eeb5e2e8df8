#pragma once
// Sharded checkpoints over a world of ranks (format: core/checkpoint).
//
// Save (collective over the world): rank 0 creates <root>/.tmp-step-N; the
// replicated tensors are written once (world rank 0) and each expert once
// (the ranks of replica 0), each rank into its own shard file, fsynced;
// rank 0 gathers the entries, writes the manifest (complete: true), fsyncs,
// renames the directory into place, then updates `latest` and drops all but
// the newest `keep` checkpoints. Until that rename the previous checkpoint is
// the newest complete one; a killed save leaves only a .tmp directory, which
// the next save or resume removes.
//
// Load: every rank reads the tensors it holds under its own layout, by name,
// from whichever shard the manifest says, so any world size and any
// expert_parallel_size can resume any checkpoint.
#include <string>

#include "core/params.h"
#include "core/proto/checkpoint.pb.h"
#include "dist/topology.h"

namespace dsk::dist {

struct CheckpointState {
  int64_t step = 0;
  int64_t sample_index = 0;
  int64_t epoch = 0;
  int64_t optimizer_step = 0;
  double learning_rate = 0;
};

struct SaveOptions {
  int keep = 3;  // newest checkpoints to keep; 0 = all
  // Test hook: this world rank sleeps (forever) after writing its shard,
  // in the middle of the save. -1 = off.
  int pause_rank = -1;
};

// `replicated` and `experts` hold parameters and optimizer state by global
// name; experts only this rank's. Returns the checkpoint directory.
std::string save_checkpoint(const std::string& root, const proto::Config& config, const Topology& topology,
                            const CheckpointState& state, const core::NamedTensors& replicated,
                            const core::NamedTensors& experts, const SaveOptions& options);

// Rank 0 resolves `path` (run dir, checkpoint root or one checkpoint) and
// checks the manifest against `config`; the choice is broadcast, so ranks
// never decide separately. Collective; every rank throws alike on failure.
std::string agree_on_checkpoint(Communicator& world, const std::string& path, const proto::Config& config);

// Removes .tmp-* directories left by killed saves (rank 0 only).
void remove_stale_saves(const std::string& root);

}  // namespace dsk::dist
