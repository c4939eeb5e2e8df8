#pragma once
// The one seam every collective of dsk goes through.
//
// Contract (every backend):
//  - All ranks of a communicator call the same collectives in the same order
//    with matching shapes; the dtype and the trailing dimensions agree.
//  - Calls are blocking from the caller's point of view and each has a
//    deadline (`timeout_s` at construction). A call that misses it, or fails
//    in the library, does not return: the backend prints one line naming the
//    collective, this rank and the communicator size, and aborts the whole
//    job with a non-zero code, so a dead peer never leaves the others hanging.
//  - Tensors are contiguous CPU tensors for the MPI and local backends.
//  - Communicators are values: `split` makes sub-groups (expert-parallel and
//    replica groups side by side); nothing is global.
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dsk::dist {

enum class ReduceOp { kSum, kMax, kMin };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Human-readable name for logs and error messages ("world", "expert", ...).
  virtual const std::string& name() const = 0;

  // In place over all ranks.
  virtual void all_reduce(at::Tensor& tensor, ReduceOp op) = 0;
  // `send` holds sum(send_rows) rows (first dimension), send_rows[r] of them
  // for rank r, in rank order. Returns sum(recv_rows) rows, recv_rows[s] from
  // rank s in rank order. recv_rows must mirror the peers' send_rows (the
  // caller exchanges counts first); zero counts are allowed anywhere.
  virtual at::Tensor all_to_all_v(const at::Tensor& send, const std::vector<int64_t>& send_rows,
                                  const std::vector<int64_t>& recv_rows) = 0;
  // Returns [size, ...tensor.shape]: every rank's tensor, in rank order.
  virtual at::Tensor all_gather(const at::Tensor& tensor) = 0;
  // In place: `tensor` on every rank becomes root's.
  virtual void broadcast(at::Tensor& tensor, int root) = 0;
  virtual void barrier() = 0;
  // Ranks with the same color form a new communicator, ordered by key (then
  // by rank). Collective over this communicator.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;
};

// A world of one: every collective is the identity (copy where it returns).
std::unique_ptr<Communicator> make_local_communicator(const std::string& name = "world");

}  // namespace dsk::dist
