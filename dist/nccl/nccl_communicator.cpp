#include "dist/nccl/nccl_communicator.h"

#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <utility>

namespace dsk::dist {
namespace {

// Sets the communicator's device for one call and restores the caller's.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    status_ = previous_ == device ? cudaSuccess : cudaSetDevice(device);
  }
  ~DeviceGuard() {
    int now = -1;
    if (previous_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_ = cudaSuccess;
};

std::string cuda_error(cudaError_t error) {
  return std::string("CUDA error ") + std::to_string(static_cast<int>(error)) + ": " + cudaGetErrorString(error);
}

}  // namespace

int cuda_device_count() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    cudaGetLastError();  // clear it: no sticky error for later CUDA calls
    return 0;
  }
  return count;
}

bool cuda_device_available() { return cuda_device_count() > 0; }

std::size_t nccl_type_size(ncclDataType_t type) {
  switch (type) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: throw std::invalid_argument("NCCL backend: unsupported ncclDataType_t " + std::to_string(type));
  }
}

NcclComm::NcclComm(Communicator& bootstrap, int device, double timeout_s, std::string name)
    : device_(device), timeout_s_(timeout_s), name_(std::move(name)) {
  rank_ = bootstrap.rank();
  size_ = bootstrap.size();
  DeviceGuard guard(device_);
  check_cuda(guard.status(), "init");
  create_stream();
#if DSK_NCCL_HAS_COMM_SPLIT
  init_over(bootstrap);
#else
  // Kept for split: a sub-communicator needs its own unique id broadcast.
  bootstrap_ = bootstrap.split(0, bootstrap.rank(), name_ + "/bootstrap");
  init_over(*bootstrap_);
#endif
}

NcclComm::NcclComm(Adopt, ncclComm_t comm, std::unique_ptr<Communicator> bootstrap, int device, double timeout_s,
                   std::string name)
    : bootstrap_(std::move(bootstrap)), device_(device), timeout_s_(timeout_s), name_(std::move(name)) {
  DeviceGuard guard(device_);
  check_cuda(guard.status(), "split");
  create_stream();
  if (comm != nullptr) {
    comm_ = comm;
    wait("split", /*stream=*/false);
    check(ncclCommUserRank(comm_, &rank_), "split");
    check(ncclCommCount(comm_, &size_), "split");
  } else {
    rank_ = bootstrap_->rank();
    size_ = bootstrap_->size();
    init_over(*bootstrap_);
  }
}

NcclComm::~NcclComm() {
  DeviceGuard guard(device_);
  if (comm_ != nullptr) {
    ncclResult_t state = ncclSuccess;
    const bool healthy = ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclSuccess &&
                         cudaStreamSynchronize(stream_) == cudaSuccess;
    bool finalized = false;
    if (healthy) {
#if DSK_NCCL_HAS_NONBLOCKING
      // Finalize flushes and tears down with the peers; a peer that never
      // arrives must not hang the exit, so it is polled against the deadline.
      ncclResult_t result = ncclCommFinalize(comm_);
      const auto deadline = std::chrono::steady_clock::now() +
                            std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                std::chrono::duration<double>(timeout_s_));
      while (nccl_in_progress(result) && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        if (ncclCommGetAsyncError(comm_, &result) != ncclSuccess) break;
      }
      finalized = result == ncclSuccess;
      if (!finalized) {
        std::fprintf(stderr, "dsk: warning: ncclCommFinalize on communicator '%s' (rank %d of %d): %s; aborting it\n",
                     name_.c_str(), rank_, size_,
                     nccl_in_progress(result) ? "deadline passed" : ncclGetErrorString(result));
      }
#else
      finalized = true;
#endif
    }
    if (finalized) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
    comm_ = nullptr;
  }
  if (one_ != nullptr) cudaFree(one_);
  if (ready_ != nullptr) cudaEventDestroy(ready_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

void NcclComm::create_stream() {
  check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "init");
  check_cuda(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "init");
  check_cuda(cudaMalloc(reinterpret_cast<void**>(&one_), sizeof(int)), "init");
  check_cuda(cudaMemset(one_, 0, sizeof(int)), "init");
}

void NcclComm::init_over(Communicator& bootstrap) {
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  at::Tensor bytes = at::zeros({static_cast<int64_t>(sizeof(id))}, at::TensorOptions().dtype(at::kByte));
  if (bootstrap.rank() == 0) {
    check(ncclGetUniqueId(&id), "init");
    std::memcpy(bytes.data_ptr(), &id, sizeof(id));
  }
  bootstrap.broadcast(bytes, 0);
  std::memcpy(&id, bytes.data_ptr(), sizeof(id));
#if DSK_NCCL_HAS_NONBLOCKING
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  check(ncclCommInitRankConfig(&comm_, size_, id, rank_, &config), "init");
#else
  // Blocking init: no deadline until it returns (NCCL < 2.14).
  check(ncclCommInitRank(&comm_, size_, id, rank_), "init");
#endif
  wait("init", /*stream=*/false);
}

void NcclComm::begin(const char* op) {
  // Inputs come from the default stream; this stream is non-blocking, so the
  // order is made explicit with an event instead of a host synchronisation.
  check_cuda(cudaEventRecord(ready_, cudaStreamLegacy), op);
  check_cuda(cudaStreamWaitEvent(stream_, ready_, 0), op);
}

void NcclComm::all_reduce(void* buffer, std::size_t count, ncclDataType_t type, ncclRedOp_t op) {
  DeviceGuard guard(device_);
  check_cuda(guard.status(), "all_reduce");
  begin("all_reduce");
  check(ncclAllReduce(buffer, buffer, count, type, op, comm_, stream_), "all_reduce");
  wait("all_reduce", /*stream=*/true);
}

void NcclComm::all_to_all_v(const void* send, const std::vector<std::size_t>& send_counts, void* recv,
                            const std::vector<std::size_t>& recv_counts, ncclDataType_t type) {
  if (static_cast<int>(send_counts.size()) != size_ || static_cast<int>(recv_counts.size()) != size_) {
    throw std::invalid_argument("all_to_all_v on '" + name_ + "': counts must have one entry per rank");
  }
  const std::size_t element = nccl_type_size(type);
  DeviceGuard guard(device_);
  check_cuda(guard.status(), "all_to_all_v");
  begin("all_to_all_v");
  const char* send_bytes = static_cast<const char*>(send);
  char* recv_bytes = static_cast<char*>(recv);
  std::size_t send_offset = 0, recv_offset = 0;
  check(ncclGroupStart(), "all_to_all_v");
  for (int peer = 0; peer < size_; ++peer) {
    if (send_counts[peer] > 0) {
      check(ncclSend(send_bytes + send_offset * element, send_counts[peer], type, peer, comm_, stream_),
            "all_to_all_v");
    }
    if (recv_counts[peer] > 0) {
      check(ncclRecv(recv_bytes + recv_offset * element, recv_counts[peer], type, peer, comm_, stream_),
            "all_to_all_v");
    }
    send_offset += send_counts[peer];
    recv_offset += recv_counts[peer];
  }
  check(ncclGroupEnd(), "all_to_all_v");
  wait("all_to_all_v", /*stream=*/true);
}

void NcclComm::all_gather(const void* send, void* recv, std::size_t count, ncclDataType_t type) {
  DeviceGuard guard(device_);
  check_cuda(guard.status(), "all_gather");
  begin("all_gather");
  check(ncclAllGather(send, recv, count, type, comm_, stream_), "all_gather");
  wait("all_gather", /*stream=*/true);
}

void NcclComm::broadcast(void* buffer, std::size_t count, ncclDataType_t type, int root) {
  if (root < 0 || root >= size_) {
    throw std::invalid_argument("broadcast on '" + name_ + "': root " + std::to_string(root) + " is not a rank");
  }
  DeviceGuard guard(device_);
  check_cuda(guard.status(), "broadcast");
  begin("broadcast");
  check(ncclBroadcast(buffer, buffer, count, type, root, comm_, stream_), "broadcast");
  wait("broadcast", /*stream=*/true);
}

void NcclComm::barrier() {
  DeviceGuard guard(device_);
  check_cuda(guard.status(), "barrier");
  check(ncclAllReduce(one_, one_, 1, ncclInt32, ncclSum, comm_, stream_), "barrier");
  wait("barrier", /*stream=*/true);
}

std::unique_ptr<NcclComm> NcclComm::split(int color, int key, std::string name) {
  if (color < 0) {
    throw std::invalid_argument("split on '" + name_ + "': color " + std::to_string(color) + " must be >= 0");
  }
  DeviceGuard guard(device_);
  check_cuda(guard.status(), "split");
#if DSK_NCCL_HAS_COMM_SPLIT
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t sub = nullptr;
  check(ncclCommSplit(comm_, color, key, &sub, &config), "split");
  wait("split", /*stream=*/false);
  return std::unique_ptr<NcclComm>(new NcclComm(Adopt{}, sub, nullptr, device_, timeout_s_, std::move(name)));
#else
  std::unique_ptr<Communicator> sub = bootstrap_->split(color, key, name + "/bootstrap");
  return std::unique_ptr<NcclComm>(new NcclComm(Adopt{}, nullptr, std::move(sub), device_, timeout_s_, std::move(name)));
#endif
}

void NcclComm::check(ncclResult_t result, const char* op) {
  if (result != ncclSuccess && !nccl_in_progress(result)) fail(op, nccl_error(result));
}

void NcclComm::check_cuda(cudaError_t error, const char* op) {
  if (error != cudaSuccess) fail(op, cuda_error(error));
}

void NcclComm::wait(const char* op, bool stream) {
  using clock = std::chrono::steady_clock;
  const auto deadline =
      clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(timeout_s_));
  for (long polls = 0;; ++polls) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t queried = ncclCommGetAsyncError(comm_, &state);
    if (queried != ncclSuccess) fail(op, "ncclCommGetAsyncError: " + nccl_error(queried));
    if (!nccl_in_progress(state)) {
      if (state != ncclSuccess) fail(op, nccl_error(state));
      if (!stream) return;
      const cudaError_t query = cudaStreamQuery(stream_);
      if (query == cudaSuccess) return;
      if (query != cudaErrorNotReady) fail(op, cuda_error(query));
    }
    // Spin first: most collectives finish in microseconds.
    if (polls > 2000) {
      if (clock::now() > deadline) {
        char limit[32];
        std::snprintf(limit, sizeof(limit), "%g", timeout_s_);
        fail(op, std::string("not complete within the communicator's deadline of ") + limit + " s");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(polls > 20000 ? 500 : 20));
    }
  }
}

std::string NcclComm::nccl_error(ncclResult_t result) const {
  std::string text = std::string("NCCL error ") + std::to_string(static_cast<int>(result)) + ": " +
                     ncclGetErrorString(result);
#if DSK_NCCL_HAS_GET_LAST_ERROR
  const char* last = ncclGetLastError(comm_);
  if (last != nullptr && *last != '\0') text += std::string(" (") + last + ")";
#endif
  return text;
}

void NcclComm::fail(const char* op, const std::string& why) {
  int initialized = 0, finalized = 0, world_rank = -1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  const bool mpi = initialized && !finalized;
  if (mpi) MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  std::fprintf(stderr, "dsk: error: %s on communicator '%s' (rank %d of %d, world rank %d): %s; aborting the job\n",
               op, name_.c_str(), rank_, size_, world_rank, why.c_str());
  std::fflush(stderr);
  if (comm_ != nullptr) ncclCommAbort(comm_);
  comm_ = nullptr;
  if (mpi) MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

namespace {

ncclDataType_t nccl_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    case at::kLong: return ncclInt64;
    case at::kInt: return ncclInt32;
    case at::kByte: return ncclUint8;
    case at::kChar: return ncclInt8;
    default: throw std::invalid_argument(std::string("NCCL backend: unsupported dtype ") + at::toString(type));
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  return ncclSum;
}

// dist::Communicator for CUDA tensors over NcclComm. Output tensors come from
// at::empty, so this part needs a LibTorch with CUDA.
class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(std::unique_ptr<NcclComm> comm) : comm_(std::move(comm)) {}

  int rank() const override { return comm_->rank(); }
  int size() const override { return comm_->size(); }
  const std::string& name() const override { return comm_->name(); }

  void all_reduce(at::Tensor& tensor, ReduceOp op) override {
    require_device_tensor(tensor, "all_reduce");
    comm_->all_reduce(tensor.data_ptr(), static_cast<std::size_t>(tensor.numel()), nccl_type(tensor.scalar_type()),
                      nccl_op(op));
  }

  at::Tensor all_to_all_v(const at::Tensor& send, const std::vector<int64_t>& send_rows,
                          const std::vector<int64_t>& recv_rows) override {
    require_device_tensor(send, "all_to_all_v");
    const int n = size();
    if (static_cast<int>(send_rows.size()) != n || static_cast<int>(recv_rows.size()) != n) {
      throw std::invalid_argument("all_to_all_v on '" + name() + "': counts must have one entry per rank");
    }
    int64_t row_numel = 1;
    for (int64_t d = 1; d < send.dim(); ++d) row_numel *= send.size(d);
    std::vector<std::size_t> send_counts(n), recv_counts(n);
    int64_t send_total = 0, recv_total = 0;
    for (int r = 0; r < n; ++r) {
      if (send_rows[r] < 0 || recv_rows[r] < 0) {
        throw std::invalid_argument("all_to_all_v on '" + name() + "': negative row count");
      }
      send_counts[r] = static_cast<std::size_t>(send_rows[r] * row_numel);
      recv_counts[r] = static_cast<std::size_t>(recv_rows[r] * row_numel);
      send_total += send_rows[r];
      recv_total += recv_rows[r];
    }
    if (send_total != send.size(0)) {
      throw std::invalid_argument("all_to_all_v on '" + name() + "': send counts sum to " +
                                  std::to_string(send_total) + " but the tensor has " +
                                  std::to_string(send.size(0)) + " rows");
    }
    std::vector<int64_t> shape = send.sizes().vec();
    shape[0] = recv_total;
    at::Tensor recv = at::empty(shape, send.options());
    comm_->all_to_all_v(send.data_ptr(), send_counts, recv.data_ptr(), recv_counts, nccl_type(send.scalar_type()));
    return recv;
  }

  at::Tensor all_gather(const at::Tensor& tensor) override {
    require_device_tensor(tensor, "all_gather");
    std::vector<int64_t> shape = tensor.sizes().vec();
    shape.insert(shape.begin(), size());
    at::Tensor out = at::empty(shape, tensor.options());
    comm_->all_gather(tensor.data_ptr(), out.data_ptr(), static_cast<std::size_t>(tensor.numel()),
                      nccl_type(tensor.scalar_type()));
    return out;
  }

  void broadcast(at::Tensor& tensor, int root) override {
    require_device_tensor(tensor, "broadcast");
    comm_->broadcast(tensor.data_ptr(), static_cast<std::size_t>(tensor.numel()), nccl_type(tensor.scalar_type()),
                     root);
  }

  void barrier() override { comm_->barrier(); }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    return std::make_unique<NcclCommunicator>(comm_->split(color, key, name));
  }

 private:
  void require_device_tensor(const at::Tensor& t, const char* op) const {
    if (!t.is_cuda() || !t.is_contiguous()) {
      throw std::invalid_argument(std::string(op) + " on '" + name() +
                                  "': the NCCL backend takes contiguous CUDA tensors");
    }
    if (t.device().index() != comm_->device()) {
      throw std::invalid_argument(std::string(op) + " on '" + name() + "': tensor on cuda:" +
                                  std::to_string(t.device().index()) + " but the communicator is on cuda:" +
                                  std::to_string(comm_->device()));
    }
  }

  std::unique_ptr<NcclComm> comm_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device, double timeout_s,
                                                     const std::string& name) {
  return std::make_unique<NcclCommunicator>(std::make_unique<NcclComm>(bootstrap, device, timeout_s, name));
}

}  // namespace dsk::dist
