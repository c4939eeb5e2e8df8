#include "dist/dispatcher.h"

#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <numeric>
#include <stdexcept>

#include "core/host_values.h"
#include "core/routing.h"

namespace dsk::dist {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;


// Rows go out with send_rows and come back with recv_rows; the gradient takes
// the opposite route, so backward is the same exchange with the counts swapped.
struct AllToAllRows : public torch::autograd::Function<AllToAllRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& rows, const at::Tensor& /*anchor*/,
                            Communicator* comm, const std::vector<int64_t>& send_rows,
                            const std::vector<int64_t>& recv_rows) {
    ctx->saved_data["comm"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(comm));
    ctx->saved_data["send_rows"] = send_rows;
    ctx->saved_data["recv_rows"] = recv_rows;
    ctx->saved_data["row_shape"] = rows.sizes().vec();
    ctx->saved_data["dtype"] = static_cast<int64_t>(rows.scalar_type());
    ctx->saved_data["device"] = rows.device();
    return comm->all_to_all_v(rows.contiguous(), send_rows, recv_rows);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* comm = reinterpret_cast<Communicator*>(static_cast<intptr_t>(ctx->saved_data["comm"].toInt()));
    const auto send_rows = ctx->saved_data["send_rows"].toIntVector();
    const auto recv_rows = ctx->saved_data["recv_rows"].toIntVector();
    at::Tensor grad = grads[0];
    if (!grad.defined()) {
      std::vector<int64_t> shape = ctx->saved_data["row_shape"].toIntVector();
      shape[0] = std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0});
      grad = at::zeros(shape, at::TensorOptions()
                                  .dtype(static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt()))
                                  .device(ctx->saved_data["device"].toDevice()));
    }
    at::Tensor grad_rows = comm->all_to_all_v(grad.contiguous(), recv_rows, send_rows);
    return {grad_rows, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

int64_t DispatchStats::rows_sent() const {
  return std::accumulate(rows_sent_to.begin(), rows_sent_to.end(), int64_t{0});
}
int64_t DispatchStats::rows_received() const {
  return std::accumulate(rows_received_from.begin(), rows_received_from.end(), int64_t{0});
}

at::Tensor all_to_all_rows(Communicator& comm, const at::Tensor& rows, const std::vector<int64_t>& send_rows,
                           const std::vector<int64_t>& recv_rows, const at::Tensor& graph_anchor) {
  return AllToAllRows::apply(rows, graph_anchor, &comm, send_rows, recv_rows);
}

Dispatcher::Dispatcher(Communicator& expert_group, ExpertSharding sharding, int64_t output_dim,
                       double capacity_factor, int64_t k)
    : comm_(expert_group),
      sharding_(std::move(sharding)),
      output_dim_(output_dim),
      capacity_factor_(capacity_factor),
      k_(k),
      graph_anchor_(at::zeros({0}).set_requires_grad(true)) {
  if (sharding_.num_shards() != comm_.size()) {
    throw std::invalid_argument("Dispatcher: sharding has " + std::to_string(sharding_.num_shards()) +
                                " shards but the expert group has " + std::to_string(comm_.size()) + " ranks");
  }
}

void Dispatcher::verify_counts(const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows) {
  const int world = comm_.size();
  const int me = comm_.rank();
  // pairs[0][s][d]: rows s will send to d; pairs[1][s][d]: rows d expects from s.
  at::Tensor pairs = at::zeros({2, world, world}, at::kLong);
  auto cell = pairs.accessor<int64_t, 3>();
  for (int r = 0; r < world; ++r) {
    cell[0][me][r] = send_rows[r];
    cell[1][r][me] = recv_rows[r];
  }
  comm_.all_reduce(pairs, ReduceOp::kSum);
  at::Tensor mismatch = (pairs[0] != pairs[1]).nonzero();
  if (mismatch.size(0) > 0) {
    const int64_t s = mismatch[0][0].item<int64_t>(), d = mismatch[0][1].item<int64_t>();
    throw std::runtime_error("dispatcher: row counts disagree on communicator '" + comm_.name() + "': rank " +
                             std::to_string(s) + " sends " + std::to_string(pairs[0][s][d].item<int64_t>()) +
                             " rows to rank " + std::to_string(d) + ", which was told to expect " +
                             std::to_string(pairs[1][s][d].item<int64_t>()) + " (" +
                             std::to_string(mismatch.size(0)) + " pair(s) disagree)");
  }
}

at::Tensor Dispatcher::forward(const at::Tensor& x, const at::Tensor& weights, const LocalExpertFn& experts,
                               DispatchStats* stats) {
  const int world = comm_.size();
  const int me = comm_.rank();
  const int64_t num_tasks = weights.size(0);
  const int64_t batch = weights.size(1);
  const int64_t local_experts = sharding_.num_local(me);
  TORCH_CHECK(x.size(0) == batch, "Dispatcher: x has ", x.size(0), " rows but weights cover ", batch);
  TORCH_CHECK(weights.size(2) == sharding_.num_experts(), "Dispatcher: weights have ", weights.size(2),
              " experts, sharding has ", sharding_.num_experts());

  const core::RoutingPlan plan = core::make_routing_plan(weights);

  // Step 1: how many rows each peer will send to each of my local experts.
  const std::vector<int64_t> experts_per_rank = sharding_.counts();
  const std::vector<int64_t> my_experts_from_each(world, local_experts);
  at::Tensor announced = plan.rows_per_expert.clone();
  announce_hook(announced);
  at::Tensor recv_counts =
      comm_.all_to_all_v(announced, experts_per_rank, my_experts_from_each).view({world, local_experts});

  std::vector<int64_t> send_rows(world);
  {
    const std::vector<int64_t> per_expert = core::host_values<int64_t>(plan.rows_per_expert);
    for (int r = 0; r < world; ++r) {
      const int64_t first = sharding_.first_expert(r);
      send_rows[r] = std::accumulate(per_expert.begin() + first,
                                     per_expert.begin() + first + experts_per_rank[r], int64_t{0});
    }
  }
  const std::vector<int64_t> recv_rows = core::host_values<int64_t>(recv_counts.sum(1));
  const std::vector<int64_t> rows_per_local_expert = core::host_values<int64_t>(recv_counts.sum(0));
  verify_counts(send_rows, recv_rows);

  // Capacity counts the expert group's examples, so with D = 1 it is the
  // same in every layout; rows beyond it are the last in global order
  // (sources arrive in rank order, each rank's slice in example order).
  int64_t capacity = -1;
  if (capacity_factor_ > 0) {
    at::Tensor group_batch = at::tensor({batch}, at::kLong);
    comm_.all_reduce(group_batch, ReduceOp::kSum);
    capacity = static_cast<int64_t>(std::ceil(capacity_factor_ * static_cast<double>(group_batch.item<int64_t>()) *
                                              static_cast<double>(k_) / static_cast<double>(sharding_.num_experts())));
  }

  const bool grad_mode = at::GradMode::is_enabled();
  const at::Tensor no_anchor = at::zeros({0}, weights.options());

  // Step 2: rows to the owners. The anchor joins the graph only when the
  // caller wants gradients w.r.t. x, a choice every rank makes alike.
  at::Tensor send = x.index_select(0, plan.example_index);
  at::Tensor received = all_to_all_rows(comm_, send, send_rows, recv_rows,
                                        grad_mode && x.requires_grad() ? graph_anchor_ : no_anchor);

  // Step 3: received rows arrive grouped by source rank, then expert; each
  // expert runs once on its rows from all sources.
  const auto index_options = recv_counts.options();  // int64 on the rows' device
  at::Tensor segment = at::repeat_interleave(at::arange(world * local_experts, index_options),
                                             recv_counts.flatten());
  at::Tensor expert_major_key = (segment % std::max<int64_t>(local_experts, 1)) * world +
                                segment / std::max<int64_t>(local_experts, 1);
  at::Tensor by_expert = std::get<1>(at::sort(expert_major_key, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  at::Tensor grouped = received.index_select(0, by_expert);

  std::vector<at::Tensor> outputs;
  int64_t offset = 0;
  int64_t dropped = 0;
  for (int64_t j = 0; j < local_experts; ++j) {
    const int64_t rows = rows_per_local_expert[j];
    const int64_t kept = capacity < 0 ? rows : std::min(rows, capacity);
    if (kept > 0) outputs.push_back(experts(j, grouped.narrow(0, offset, kept)));
    if (kept < rows) {
      outputs.push_back(at::zeros({rows - kept, output_dim_}, weights.options()));
      dropped += rows - kept;
    }
    offset += rows;
  }
  at::Tensor grouped_out = outputs.empty() ? at::zeros({0, output_dim_}, weights.options())
                                           : (outputs.size() == 1 ? outputs[0] : at::cat(outputs, 0));
  at::Tensor inverse = at::empty_like(by_expert);
  inverse.index_put_({by_expert}, at::arange(by_expert.numel(), index_options));
  at::Tensor expert_out = grouped_out.index_select(0, inverse);

  // Step 4: outputs back to the senders, in the order of the plan.
  at::Tensor returned = all_to_all_rows(comm_, expert_out, recv_rows, send_rows,
                                        grad_mode ? graph_anchor_ : no_anchor);

  at::Tensor pair_weights = weights.index({at::indexing::Slice(), plan.example_index, plan.expert_index});
  at::Tensor weighted = pair_weights.unsqueeze(-1) * returned.unsqueeze(0);  // [T, P, D]
  at::Tensor combined = at::zeros({num_tasks, batch, output_dim_}, weighted.options())
                            .index_add(1, plan.example_index, weighted);

  if (stats) {
    stats->rows_sent_to = send_rows;
    stats->rows_received_from = recv_rows;
    stats->rows_per_local_expert = rows_per_local_expert;
    stats->rows_per_expert = plan.rows_per_expert;
    stats->dropped_rows = dropped;
  }
  return combined;
}

}  // namespace dsk::dist
