#include "core/error.h"
#include "dist/communicator.h"

namespace dsk::dist {
namespace {

class LocalCommunicator final : public Communicator {
 public:
  explicit LocalCommunicator(std::string name) : name_(std::move(name)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
  void all_reduce(at::Tensor&, ReduceOp) override {}
  at::Tensor all_to_all_v(const at::Tensor& send, const std::vector<int64_t>& send_rows,
                          const std::vector<int64_t>& recv_rows) override {
    if (send_rows.size() != 1 || recv_rows.size() != 1 || send_rows[0] != recv_rows[0] ||
        send_rows[0] != send.size(0)) {
      throw std::runtime_error("all_to_all_v on communicator '" + name_ +
                               "' (size 1): sent and received row counts disagree");
    }
    return send.clone();
  }
  at::Tensor all_gather(const at::Tensor& tensor) override { return tensor.unsqueeze(0).clone(); }
  void broadcast(at::Tensor&, int) override {}
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int, const std::string& name) override {
    return std::make_unique<LocalCommunicator>(name);
  }

 private:
  std::string name_;
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator(const std::string& name) {
  return std::make_unique<LocalCommunicator>(name);
}

}  // namespace dsk::dist
