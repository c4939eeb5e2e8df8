#include "core/experts/expert.h"

#include <cmath>
#include <stdexcept>

namespace dsk::core {
namespace {
constexpr int64_t kKernel = 5;

at::Tensor init_uniform(at::IntArrayRef shape, int64_t fan_in, uint64_t seed, const std::string& name) {
  at::Generator gen = make_generator(seed, name);
  return uniform_parameter(shape, 1.0 / std::sqrt(static_cast<double>(fan_in)), gen);
}
}  // namespace

ExpertNet::ExpertNet(const ExpertSpec& spec, uint64_t seed, const std::string& name) : name_(name) {
  if (spec.hidden.empty()) throw std::invalid_argument("ExpertNet: needs at least one FC layer");
  int64_t features = 1;
  if (!spec.conv_channels.empty()) {
    if (spec.input_shape.size() != 3) throw std::invalid_argument("ExpertNet: conv stages need {C, H, W} inputs");
    int64_t channels = spec.input_shape[0], h = spec.input_shape[1], w = spec.input_shape[2];
    for (size_t i = 0; i < spec.conv_channels.size(); ++i) {
      const int64_t out = spec.conv_channels[i];
      const std::string base = name + "conv" + std::to_string(i);
      const int64_t fan_in = channels * kKernel * kKernel;
      convs_.push_back({init_uniform({out, channels, kKernel, kKernel}, fan_in, seed, base + ".weight"),
                        init_uniform({out}, fan_in, seed, base + ".bias")});
      h = (h - kKernel + 1) / 2;
      w = (w - kKernel + 1) / 2;
      if (h < 1 || w < 1) throw std::invalid_argument("ExpertNet: input too small for the conv stages");
      channels = out;
    }
    features = channels * h * w;
  } else {
    for (int64_t d : spec.input_shape) features *= d;
  }
  for (size_t i = 0; i < spec.hidden.size(); ++i) {
    const std::string base = name + "fc" + std::to_string(i);
    fcs_.push_back({init_uniform({spec.hidden[i], features}, features, seed, base + ".weight"),
                    init_uniform({spec.hidden[i]}, features, seed, base + ".bias")});
    features = spec.hidden[i];
  }
  output_dim_ = features;
}

at::Tensor ExpertNet::forward(const at::Tensor& x) const {
  at::Tensor h = x;
  for (const auto& conv : convs_) {
    h = at::max_pool2d(at::relu(at::conv2d(h, conv.weight, conv.bias)), {2, 2});
  }
  h = h.flatten(1);
  for (size_t i = 0; i < fcs_.size(); ++i) {
    h = at::linear(h, fcs_[i].weight, fcs_[i].bias);
    if (i + 1 < fcs_.size()) h = at::relu(h);
  }
  return h;
}

NamedTensors ExpertNet::parameters() const {
  NamedTensors out;
  for (size_t i = 0; i < convs_.size(); ++i) {
    const std::string base = name_ + "conv" + std::to_string(i);
    out.push_back({base + ".weight", convs_[i].weight});
    out.push_back({base + ".bias", convs_[i].bias});
  }
  for (size_t i = 0; i < fcs_.size(); ++i) {
    const std::string base = name_ + "fc" + std::to_string(i);
    out.push_back({base + ".weight", fcs_[i].weight});
    out.push_back({base + ".bias", fcs_[i].bias});
  }
  return out;
}

TaskTowers::TaskTowers(int64_t num_tasks, int64_t input_dim, const std::vector<int64_t>& hidden,
                       int64_t output_dim, uint64_t seed, const std::string& name)
    : name_(name) {
  std::vector<int64_t> widths = hidden;
  widths.push_back(output_dim);
  int64_t in = input_dim;
  for (size_t l = 0; l < widths.size(); ++l) {
    const std::string base = name + "layer" + std::to_string(l);
    weights_.push_back(init_uniform({num_tasks, in, widths[l]}, in, seed, base + ".weight"));
    biases_.push_back(init_uniform({num_tasks, 1, widths[l]}, in, seed, base + ".bias"));
    in = widths[l];
  }
}

at::Tensor TaskTowers::forward(const at::Tensor& x) const {
  at::Tensor h = x;
  for (size_t l = 0; l < weights_.size(); ++l) {
    h = at::baddbmm(biases_[l], h, weights_[l]);
    if (l + 1 < weights_.size()) h = at::relu(h);
  }
  return h;
}

NamedTensors TaskTowers::parameters() const {
  NamedTensors out;
  for (size_t l = 0; l < weights_.size(); ++l) {
    const std::string base = name_ + "layer" + std::to_string(l);
    out.push_back({base + ".weight", weights_[l]});
    out.push_back({base + ".bias", biases_[l]});
  }
  return out;
}

}  // namespace dsk::core
