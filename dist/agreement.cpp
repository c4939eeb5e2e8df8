#include "dist/agreement.h"

#include <exception>

#include "core/error.h"

namespace dsk::dist {

void run_agreed(Communicator& comm, const std::function<void()>& body) {
  std::exception_ptr error;
  int64_t code = 0;
  try {
    body();
  } catch (const UsageError&) {
    error = std::current_exception();
    code = 2;
  } catch (const PeerFailure& e) {
    error = std::current_exception();
    code = e.exit_code();
  } catch (const std::exception&) {
    error = std::current_exception();
    code = 1;
  }
  at::Tensor outcome = at::tensor({code != 0 ? static_cast<int64_t>(comm.rank()) : comm.size(), -code}, at::kLong);
  comm.all_reduce(outcome, ReduceOp::kMin);  // lowest failing rank; -max code
  const int64_t first_failing = outcome[0].item<int64_t>();
  if (first_failing == comm.size()) return;
  if (first_failing == comm.rank()) std::rethrow_exception(error);
  throw PeerFailure(static_cast<int>(-outcome[1].item<int64_t>()));
}

}  // namespace dsk::dist
