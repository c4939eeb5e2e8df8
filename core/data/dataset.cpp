#include "core/data/dataset.h"

#include <string>

#include "core/data/fashion_mnist.h"
#include "core/data/synthetic.h"
#include "core/error.h"
#include "core/proto/config.pb.h"

namespace dsk::core {

DataSplits load_data(const proto::DataConfig& config) {
  switch (config.type()) {
    case proto::DataConfig::MULTI_FASHION_MNIST:
      return load_multi_fashion_mnist(config);
    case proto::DataConfig::SYNTHETIC:
      return make_synthetic(config.synthetic(), config.seed());
  }
  throw UsageError("config: data.type = " + std::to_string(static_cast<int>(config.type())) +
                   " is not a known data set");
}

}  // namespace dsk::core
