#pragma once
// NCCL backend: the GPU data plane (built when DSK_WITH_NCCL; DSK_HAVE_NCCL=1
// is then defined for every user of dsk_dist). MPI bootstraps it: rank 0 makes
// the ncclUniqueId and broadcasts it over an MPI-backed Communicator.
//
// Two levels:
//  - NcclComm works on raw device pointers (void*, element count,
//    ncclDataType_t). It needs only the CUDA runtime, so it is usable and
//    testable with a CPU-only LibTorch.
//  - make_nccl_communicator() adapts it to dist::Communicator for CUDA
//    at::Tensors; that needs a LibTorch built with CUDA (at::hasCUDA()).
//
// Contract, on top of dist/communicator.h:
//  - Construction, every collective and split are collective over all ranks
//    of the communicator (and construction over the bootstrap communicator),
//    called in the same order with matching counts and types.
//  - Stream semantics: a call makes the communicator's own stream wait for
//    the work already queued on the legacy default CUDA stream (LibTorch's
//    current stream unless the caller changed it), enqueues on the
//    communicator's stream, and returns only once that work is complete. So
//    inputs must be produced on the default stream or be ready already;
//    outputs are ready for any stream and the host when the call returns.
//  - Deadlines: after enqueueing, the call polls cudaStreamQuery together
//    with ncclCommGetAsyncError until done or until `timeout_s` has passed
//    (also for init and split with non-blocking communicators, NCCL >= 2.14).
//    On expiry or error it prints one line
//      dsk: error: <collective> on communicator '<name>' (rank r of n, world
//      rank w): <why>; aborting the job
//    calls ncclCommAbort and then MPI_Abort(MPI_COMM_WORLD, 1): it never
//    returns and never hangs. Bad arguments (counts, dtype, a CPU tensor)
//    throw std::invalid_argument before anything is enqueued.
//  - One device per communicator (`device`, a CUDA ordinal); every call sets
//    it for its duration and restores the caller's current device.
//  - Ownership: the communicator owns its ncclComm_t, stream and event; it
//    is non-copyable; the destructor finalises and destroys the ncclComm_t,
//    or aborts it when an error is pending. Buffers belong to the caller.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/nccl/nccl_version.h"

namespace dsk::dist {

// Number of CUDA devices this process sees; 0 when there are none or the
// runtime cannot start (no driver, or an insufficient one: error 35). Never
// crashes and leaves no sticky CUDA error behind.
int cuda_device_count();
bool cuda_device_available();

// Size in bytes of one element of `type`.
std::size_t nccl_type_size(ncclDataType_t type);

class NcclComm {
 public:
  // Collective over `bootstrap` (any backend, usually MPI): rank r of
  // bootstrap becomes rank r here. `device` is this rank's CUDA ordinal.
  NcclComm(Communicator& bootstrap, int device, double timeout_s, std::string name);
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return device_; }
  const std::string& name() const { return name_; }
  cudaStream_t stream() const { return stream_; }

  // In place; `count` elements of `type` at `buffer` (device memory).
  void all_reduce(void* buffer, std::size_t count, ncclDataType_t type, ncclRedOp_t op);
  // `send` holds sum(send_counts) elements, send_counts[r] for rank r packed
  // in rank order; `recv` receives recv_counts[s] from rank s packed in rank
  // order. recv_counts must mirror the peers' send_counts. One ncclSend /
  // ncclRecv per peer with a nonzero count, in one group; zero counts are
  // skipped (symmetrically, since the counts mirror).
  void all_to_all_v(const void* send, const std::vector<std::size_t>& send_counts, void* recv,
                    const std::vector<std::size_t>& recv_counts, ncclDataType_t type);
  // `recv` holds size() * count elements: rank r's `count` at offset r * count.
  void all_gather(const void* send, void* recv, std::size_t count, ncclDataType_t type);
  // In place from `root`.
  void broadcast(void* buffer, std::size_t count, ncclDataType_t type, int root);
  // An all-reduce of one element on the device.
  void barrier();
  // Ranks with the same color (>= 0) form a new communicator on the same
  // device, ordered by key, then by rank. ncclCommSplit where available
  // (DSK_NCCL_HAS_COMM_SPLIT), else a new unique id per color over the
  // bootstrap communicator split the same way.
  std::unique_ptr<NcclComm> split(int color, int key, std::string name);

 private:
  struct Adopt {};
  // Takes ownership of an initialised (or initialising) ncclComm_t.
  NcclComm(Adopt, ncclComm_t comm, std::unique_ptr<Communicator> bootstrap, int device, double timeout_s,
           std::string name);
  // Inits over `bootstrap`: unique id from its rank 0, then ncclCommInitRank.
  void init_over(Communicator& bootstrap);
  void create_stream();
  void begin(const char* op);  // device, then the stream waits for the default stream
  void check(ncclResult_t result, const char* op);
  void check_cuda(cudaError_t error, const char* op);
  // Polls until the NCCL state is no longer in progress and, if `stream`,
  // the stream is idle; fails at the deadline.
  void wait(const char* op, bool stream);
  std::string nccl_error(ncclResult_t result) const;
  [[noreturn]] void fail(const char* op, const std::string& why);

  ncclComm_t comm_ = nullptr;
  // Owned bootstrap for the split fallback (null with ncclCommSplit).
  std::unique_ptr<Communicator> bootstrap_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  int* one_ = nullptr;  // barrier's device element
  int device_ = 0;
  double timeout_s_ = 0;
  std::string name_;
  int rank_ = 0;
  int size_ = 1;
};

// dist::Communicator over NCCL for contiguous CUDA tensors on `device`
// (float, double, half, bfloat16, int64, int32, uint8, int8). Outputs
// (all_to_all_v, all_gather) come from at::empty with the input's options.
// Collective over `bootstrap`; see NcclComm for streams and deadlines.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device, double timeout_s,
                                                     const std::string& name);

}  // namespace dsk::dist
