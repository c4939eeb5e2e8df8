#pragma once
// Adam (Kingma & Ba 2015) over named parameters, with the update of
// torch.optim.Adam (bias-corrected moments, eps outside the square root).
// dsk keeps its own so the state is named by parameter (checkpoints store
// `<name>.exp_avg` beside the parameter, loadable under any sharding) and so
// only the parameters this rank owns carry state.
#include <cstdint>
#include <string>
#include <vector>

#include "core/params.h"

namespace dsk::core {

struct AdamOptions {
  double learning_rate = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

class Adam {
 public:
  Adam(NamedTensors params, AdamOptions options);
  // Applies one update from the parameters' .grad(); a parameter without a
  // gradient is left alone (its moments too).
  void step();
  void zero_grad();
  int64_t step_count() const { return step_; }
  // For resuming: the moments are restored through state()'s tensors.
  void set_step_count(int64_t step) { step_ = step; }
  void set_learning_rate(double lr) { options_.learning_rate = lr; }
  double learning_rate() const { return options_.learning_rate; }
  const NamedTensors& parameters() const { return params_; }
  // `<name>.exp_avg`, `<name>.exp_avg_sq` for every parameter.
  NamedTensors state() const;

 private:
  NamedTensors params_;
  AdamOptions options_;
  std::vector<at::Tensor> exp_avg_;
  std::vector<at::Tensor> exp_avg_sq_;
  int64_t step_ = 0;
};

}  // namespace dsk::core
