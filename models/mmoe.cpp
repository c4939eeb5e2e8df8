#include "models/mmoe.h"

#include "core/error.h"
#include "core/gates/regularizers.h"
#include "core/proto/config.pb.h"

namespace dsk::models {
namespace {

core::ExpertSpec expert_spec(const proto::ModelConfig& config, const ModelShape& shape) {
  core::ExpertSpec spec;
  spec.input_shape = shape.input_shape;
  const auto& e = config.expert();
  if (e.type() == proto::ExpertConfig::CNN) {
    if (shape.input_shape.size() != 3) {
      throw UsageError("config: model.expert.type = CNN needs image inputs; use MLP for this data set");
    }
    if (e.conv_channels_size() == 0) spec.conv_channels = {10, 20};
    for (int c : e.conv_channels()) spec.conv_channels.push_back(c);
  } else if (e.conv_channels_size() > 0) {
    throw UsageError("config: model.expert.conv_channels is set but model.expert.type = MLP");
  }
  for (int h : e.hidden()) spec.hidden.push_back(h);
  if (spec.hidden.empty()) spec.hidden = {50, 50};
  for (int64_t v : spec.hidden) {
    if (v < 1) throw UsageError("config: model.expert.hidden entries must be >= 1");
  }
  for (int64_t v : spec.conv_channels) {
    if (v < 1) throw UsageError("config: model.expert.conv_channels entries must be >= 1");
  }
  return spec;
}

std::vector<int64_t> tower_hidden(const proto::ModelConfig& config) {
  std::vector<int64_t> hidden(config.tower_hidden().begin(), config.tower_hidden().end());
  if (hidden.empty()) hidden = {50};
  for (int64_t v : hidden) {
    if (v < 1) throw UsageError("config: model.tower_hidden entries must be >= 1");
  }
  return hidden;
}

int64_t flat_dim(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

void validate_model_config(const proto::ModelConfig& config, const ModelShape& shape) {
  expert_spec(config, shape);
  tower_hidden(config);
}

ModelShape model_shape_of(const core::Dataset& data) {
  ModelShape shape;
  shape.num_tasks = data.num_tasks();
  const auto sizes = data.inputs.sizes();
  shape.input_shape.assign(sizes.begin() + 1, sizes.end());
  shape.output_dim = data.kind == core::TaskKind::kClassification ? data.num_classes : 1;
  return shape;
}

MmoeModel::MmoeModel(const proto::ModelConfig& config, const ModelShape& shape, uint64_t seed,
                     dist::Communicator& expert_group)
    : gate_(core::make_gate(config.gate(),
                            core::GateShape{shape.num_tasks, config.num_experts(), flat_dim(shape.input_shape)},
                            seed)),
      dispatcher_(expert_group, dist::ExpertSharding(config.num_experts(), expert_group.size()),
                  expert_spec(config, shape).hidden.back(), config.capacity_factor(), config.gate().k()),
      towers_(shape.num_tasks, expert_spec(config, shape).hidden.back(), tower_hidden(config), shape.output_dim,
              seed) {
  const core::ExpertSpec spec = expert_spec(config, shape);
  const auto& sharding = dispatcher_.sharding();
  first_local_expert_ = sharding.first_expert(expert_group.rank());
  const int64_t local = sharding.num_local(expert_group.rank());
  experts_.reserve(local);
  for (int64_t j = 0; j < local; ++j) {
    experts_.emplace_back(spec, seed, "experts." + std::to_string(first_local_expert_ + j) + ".");
  }
}

MmoeModel::Output MmoeModel::forward(const at::Tensor& x, bool training) {
  Output out;
  out.gate = gate_->forward(x.flatten(1), training);
  at::Tensor mixed = dispatcher_.forward(
      x, out.gate.weights, [this](int64_t j, const at::Tensor& rows) { return experts_[j].forward(rows); },
      &out.dispatch);
  out.predictions = towers_.forward(mixed);
  return out;
}

void MmoeModel::to(const at::Device& device) {
  at::NoGradGuard no_grad;
  for (const auto& group : {replicated_parameters(), expert_parameters()}) {
    for (const auto& p : group) {
      if (p.tensor.device() != device) p.tensor.set_data(p.tensor.to(device));
    }
  }
}

core::NamedTensors MmoeModel::replicated_parameters() const {
  core::NamedTensors params = gate_->parameters();
  core::prepend_prefix(params, "gate.");
  for (auto& p : towers_.parameters()) params.push_back(p);
  return params;
}

core::NamedTensors MmoeModel::expert_parameters() const {
  core::NamedTensors params;
  for (const auto& e : experts_) {
    for (auto& p : e.parameters()) params.push_back(p);
  }
  return params;
}

at::Tensor task_loss_sums(const at::Tensor& predictions, const at::Tensor& targets, core::TaskKind kind) {
  if (kind == core::TaskKind::kClassification) {
    // Towers emit logits; the softmax is applied here once (no double softmax).
    at::Tensor log_probs = at::log_softmax(predictions, -1);          // [T, B, C]
    at::Tensor picked = log_probs.gather(2, targets.t().unsqueeze(-1)); // [T, B, 1]
    return -picked.squeeze(-1).sum(1);
  }
  at::Tensor diff = predictions.squeeze(-1) - targets.t();
  return (diff * diff).sum(1);
}

at::Tensor task_correct_counts(const at::Tensor& predictions, const at::Tensor& targets) {
  return (predictions.argmax(-1) == targets.t()).sum(1);
}

at::Tensor regularizer_share(const core::GateOutput& gate, const proto::GateConfig& config, int64_t local_batch,
                             int64_t global_batch, int64_t step) {
  at::Tensor term = gate.nonpow2_penalty_sum;
  const double entropy_coef = core::entropy_coefficient(config, step);
  if (entropy_coef != 0.0) term = term + entropy_coef * gate.entropy_sum;
  const double batch_share = static_cast<double>(local_batch) / static_cast<double>(global_batch);
  double share = batch_share;
  if (gate.per_example) {
    share = config.regularizer_reduction() == proto::GateConfig::SUM ? 1.0
                                                                    : 1.0 / static_cast<double>(global_batch);
  }
  at::Tensor result = term * share;
  if (config.load_balance() != proto::GateConfig::NONE && gate.load_balance_loss.defined() &&
      config.load_balance_coef() != 0.0) {
    result = result + (config.load_balance_coef() * batch_share) * gate.load_balance_loss;
  }
  return result;
}

}  // namespace dsk::models
