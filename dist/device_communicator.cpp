#include "dist/device_communicator.h"

#include <stdexcept>

namespace dsk::dist {
namespace {

class DeviceDispatchCommunicator final : public Communicator {
 public:
  DeviceDispatchCommunicator(std::unique_ptr<Communicator> cpu, std::unique_ptr<Communicator> gpu)
      : cpu_(std::move(cpu)), gpu_(std::move(gpu)) {
    if (cpu_->size() != gpu_->size() || cpu_->rank() != gpu_->rank()) {
      throw std::invalid_argument("device communicator '" + cpu_->name() +
                                  "': the CPU and GPU backends must span the same ranks in the same order");
    }
  }
  int rank() const override { return cpu_->rank(); }
  int size() const override { return cpu_->size(); }
  const std::string& name() const override { return cpu_->name(); }

  void all_reduce(at::Tensor& tensor, ReduceOp op) override { pick(tensor).all_reduce(tensor, op); }
  at::Tensor all_to_all_v(const at::Tensor& send, const std::vector<int64_t>& send_rows,
                          const std::vector<int64_t>& recv_rows) override {
    return pick(send).all_to_all_v(send, send_rows, recv_rows);
  }
  at::Tensor all_gather(const at::Tensor& tensor) override { return pick(tensor).all_gather(tensor); }
  void broadcast(at::Tensor& tensor, int root) override { pick(tensor).broadcast(tensor, root); }
  void barrier() override { cpu_->barrier(); }
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    auto cpu = cpu_->split(color, key, name);
    auto gpu = gpu_->split(color, key, name);
    return std::make_unique<DeviceDispatchCommunicator>(std::move(cpu), std::move(gpu));
  }

 private:
  Communicator& pick(const at::Tensor& t) { return t.is_cuda() ? *gpu_ : *cpu_; }
  std::unique_ptr<Communicator> cpu_;
  std::unique_ptr<Communicator> gpu_;
};

}  // namespace

std::unique_ptr<Communicator> make_device_dispatch_communicator(std::unique_ptr<Communicator> cpu,
                                                                std::unique_ptr<Communicator> gpu) {
  return std::make_unique<DeviceDispatchCommunicator>(std::move(cpu), std::move(gpu));
}

}  // namespace dsk::dist
