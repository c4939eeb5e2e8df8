#pragma once
// The all-to-all dispatcher of the MoE layer (DESIGN.md section 3):
//   1. routing plan from the gate weights (core/routing.h);
//   2. exchange of per-(rank, local expert) row counts, then of the rows;
//   3. each local expert runs once on all rows it received;
//   4. the reverse exchange returns the outputs; they are combined with the
//      weights of every task in one batched index_add.
// Both exchanges are one autograd op whose backward is the opposite exchange,
// so gradients flow to the experts on their owners and back to the senders.
//
// Contract: every rank of the expert group calls forward the same number of
// times, in the same order, and backward through the result (training), even
// with an empty local batch. x.requires_grad() must agree on all ranks.
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "dist/communicator.h"
#include "dist/sharding.h"

namespace dsk::dist {

// Runs local expert `local_index` (0-based on this rank) on `rows`.
using LocalExpertFn = std::function<at::Tensor(int64_t local_index, const at::Tensor& rows)>;

struct DispatchStats {
  std::vector<int64_t> rows_sent_to;        // per rank of the expert group
  std::vector<int64_t> rows_received_from;  // per rank of the expert group
  std::vector<int64_t> rows_per_local_expert;  // received, before capacity
  // [n] int64: pairs this rank routed to each expert (before capacity).
  at::Tensor rows_per_expert;
  int64_t dropped_rows = 0;  // received rows beyond an expert's capacity
  int64_t rows_sent() const;
  int64_t rows_received() const;
};

class Dispatcher {
 public:
  // capacity_factor 0: dropless. Otherwise each expert runs on at most
  // ceil(capacity_factor * group_batch * k / n) rows (see config.proto).
  Dispatcher(Communicator& expert_group, ExpertSharding sharding, int64_t output_dim,
             double capacity_factor = 0.0, int64_t k = 1);
  virtual ~Dispatcher() = default;

  // x: [B, ...] this rank's examples; weights: [T, B, n]. Returns [T, B, D]:
  // out[t, b] = sum over e with weights[t, b, e] != 0 of weights[t, b, e] * f_e(x[b]).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& weights, const LocalExpertFn& experts,
                     DispatchStats* stats = nullptr);

  const ExpertSharding& sharding() const { return sharding_; }

 protected:
  // Fault-injection seam for tests: may alter the counts this rank announces
  // to its peers ([n] rows per expert) after the rows were planned.
  virtual void announce_hook(at::Tensor& /*announced_rows_per_expert*/) {}

 private:
  // Every (sender, receiver) pair's announced count must equal what the
  // sender will send; checked with one small all-reduce so a mismatch ends
  // every rank with the same error instead of a truncated or hung exchange.
  void verify_counts(const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows);

  Communicator& comm_;
  ExpertSharding sharding_;
  int64_t output_dim_;
  double capacity_factor_;
  int64_t k_;
  // Zero-element leaf that requires grad: keeps both exchanges in the
  // backward graph on every rank, even one that ran no expert (otherwise
  // that rank would skip the collective and its peers would wait forever).
  at::Tensor graph_anchor_;
};

// The exchange as an autograd op (exposed for tests and benchmarks).
at::Tensor all_to_all_rows(Communicator& comm, const at::Tensor& rows, const std::vector<int64_t>& send_rows,
                           const std::vector<int64_t>& recv_rows, const at::Tensor& graph_anchor);

}  // namespace dsk::dist
