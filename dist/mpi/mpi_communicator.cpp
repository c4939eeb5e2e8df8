#include "dist/mpi/mpi_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <climits>
#include <cstdio>
#include <stdexcept>
#include <thread>

namespace dsk::dist {
namespace {

MPI_Datatype mpi_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    case at::kByte: return MPI_UINT8_T;
    case at::kChar: return MPI_INT8_T;
    default: throw std::invalid_argument(std::string("MPI backend: unsupported dtype ") + at::toString(type));
  }
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  return MPI_SUM;
}

int checked_int(int64_t value, const char* what) {
  if (value < 0 || value > INT_MAX) {
    throw std::overflow_error(std::string("MPI backend: ") + what + " = " + std::to_string(value) +
                              " does not fit an MPI count (int)");
  }
  return static_cast<int>(value);
}

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return std::string(text, len);
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::string name, double timeout_s)
      : comm_(comm), name_(std::move(name)), timeout_s_(timeout_s) {
    // Errors come back as codes so they are reported with context, then the
    // job is aborted by us (MPI_ERRORS_ARE_FATAL would print MPI's own text).
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }

  void all_reduce(at::Tensor& tensor, ReduceOp op) override {
    require_contiguous(tensor, "all_reduce");
    MPI_Request request;
    check(MPI_Iallreduce(MPI_IN_PLACE, tensor.data_ptr(), checked_int(tensor.numel(), "numel"),
                         mpi_type(tensor.scalar_type()), mpi_op(op), comm_, &request),
          "all_reduce");
    wait(request, "all_reduce");
  }

  at::Tensor all_to_all_v(const at::Tensor& send, const std::vector<int64_t>& send_rows,
                          const std::vector<int64_t>& recv_rows) override {
    require_contiguous(send, "all_to_all_v");
    if (static_cast<int>(send_rows.size()) != size_ || static_cast<int>(recv_rows.size()) != size_) {
      throw std::invalid_argument("all_to_all_v on '" + name_ + "': counts must have one entry per rank");
    }
    int64_t row_numel = 1;
    for (int64_t d = 1; d < send.dim(); ++d) row_numel *= send.size(d);
    std::vector<int> send_counts(size_), send_displs(size_), recv_counts(size_), recv_displs(size_);
    int64_t send_total = 0, recv_total = 0;
    for (int r = 0; r < size_; ++r) {
      send_counts[r] = checked_int(send_rows[r] * row_numel, "send count");
      recv_counts[r] = checked_int(recv_rows[r] * row_numel, "recv count");
      send_displs[r] = checked_int(send_total * row_numel, "send displacement");
      recv_displs[r] = checked_int(recv_total * row_numel, "recv displacement");
      send_total += send_rows[r];
      recv_total += recv_rows[r];
    }
    if (send_total != send.size(0)) {
      throw std::invalid_argument("all_to_all_v on '" + name_ + "': send counts sum to " +
                                  std::to_string(send_total) + " but the tensor has " +
                                  std::to_string(send.size(0)) + " rows");
    }
    std::vector<int64_t> shape = send.sizes().vec();
    shape[0] = recv_total;
    at::Tensor recv = at::empty(shape, send.options());
    MPI_Datatype type = mpi_type(send.scalar_type());
    // One receive and one send per peer with a nonzero count (what
    // MPI_Alltoallv does inside), so that at the deadline the peers that
    // never answered can be named. Messages of successive calls cannot
    // cross: each call completes all its receives before returning, and
    // MPI keeps the order of messages between two ranks.
    const size_t element = send.element_size();
    auto* send_bytes = static_cast<const char*>(send.data_ptr());
    auto* recv_bytes = static_cast<char*>(recv.data_ptr());
    std::vector<MPI_Request> requests;
    std::vector<int> peers;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      if (recv_counts[r] > 0) {
        requests.emplace_back();
        peers.push_back(r);
        check(MPI_Irecv(recv_bytes + recv_displs[r] * element, recv_counts[r], type, r, kAllToAllTag, comm_,
                        &requests.back()),
              "all_to_all_v");
      }
      if (send_counts[r] > 0) {
        requests.emplace_back();
        peers.push_back(r);
        check(MPI_Isend(send_bytes + send_displs[r] * element, send_counts[r], type, r, kAllToAllTag, comm_,
                        &requests.back()),
              "all_to_all_v");
      }
    }
    if (send_counts[rank_] != recv_counts[rank_]) {
      throw std::invalid_argument("all_to_all_v on '" + name_ + "': this rank sends itself " +
                                  std::to_string(send_counts[rank_]) + " elements but expects " +
                                  std::to_string(recv_counts[rank_]));
    }
    if (send_counts[rank_] > 0) {
      std::memcpy(recv_bytes + recv_displs[rank_] * element, send_bytes + send_displs[rank_] * element,
                  static_cast<size_t>(send_counts[rank_]) * element);
    }
    wait_all(requests, peers, "all_to_all_v");
    return recv;
  }

  at::Tensor all_gather(const at::Tensor& tensor) override {
    require_contiguous(tensor, "all_gather");
    std::vector<int64_t> shape = tensor.sizes().vec();
    shape.insert(shape.begin(), size_);
    at::Tensor out = at::empty(shape, tensor.options());
    MPI_Datatype type = mpi_type(tensor.scalar_type());
    const int count = checked_int(tensor.numel(), "numel");
    MPI_Request request;
    check(MPI_Iallgather(tensor.data_ptr(), count, type, out.data_ptr(), count, type, comm_, &request),
          "all_gather");
    wait(request, "all_gather");
    return out;
  }

  void broadcast(at::Tensor& tensor, int root) override {
    require_contiguous(tensor, "broadcast");
    MPI_Request request;
    check(MPI_Ibcast(tensor.data_ptr(), checked_int(tensor.numel(), "numel"), mpi_type(tensor.scalar_type()),
                     root, comm_, &request),
          "broadcast");
    wait(request, "broadcast");
  }

  void barrier() override {
    MPI_Request request;
    check(MPI_Ibarrier(comm_, &request), "barrier");
    wait(request, "barrier");
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    MPI_Comm sub;
    check(MPI_Comm_split(comm_, color, key, &sub), "split");
    return std::make_unique<MpiCommunicator>(sub, name, timeout_s_);
  }

 private:
  void require_contiguous(const at::Tensor& t, const char* op) const {
    if (!t.is_contiguous() || t.device().type() != at::kCPU) {
      throw std::invalid_argument(std::string(op) + " on '" + name_ +
                                  "': the MPI backend takes contiguous CPU tensors");
    }
  }

  void check(int code, const char* op) const {
    if (code != MPI_SUCCESS) fail(op, "MPI error: " + mpi_error_string(code));
  }

  // Polls instead of blocking so a peer that died or never arrives ends the
  // job at the deadline. Spins briefly first: most collectives here finish in
  // microseconds and a sleep would dominate them.
  void wait(MPI_Request& request, const char* op) const {
    std::vector<MPI_Request> one = {request};
    wait_all(one, {}, op);
    request = one[0];
  }

  // As wait(), for several requests. With `peers` (the other end of each
  // point-to-point request) the error names the ranks still pending; a
  // collective cannot tell who is missing and says "the peers".
  void wait_all(std::vector<MPI_Request>& requests, const std::vector<int>& peers, const char* op) const {
    using clock = std::chrono::steady_clock;
    const auto deadline = clock::now() + std::chrono::duration_cast<clock::duration>(
                                             std::chrono::duration<double>(timeout_s_));
    for (int polls = 0;; ++polls) {
      int done = 0;
      check(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE), op);
      if (done) return;
      if (polls > 2000) {
        if (clock::now() > deadline) {
          char limit[32];
          std::snprintf(limit, sizeof(limit), "%g", timeout_s_);
          fail(op, "no answer from " + silent_peers(requests, peers) +
                       " within parallel.collective_timeout_s = " + limit + " s");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(polls > 20000 ? 500 : 20));
      }
    }
  }

  // "rank 1 of 'expert'", "ranks 1, 3 of 'expert'", or "the peers".
  std::string silent_peers(std::vector<MPI_Request>& requests, const std::vector<int>& peers) const {
    std::vector<int> silent;
    for (size_t i = 0; i < peers.size(); ++i) {
      int finished = 0;
      if (requests[i] != MPI_REQUEST_NULL) MPI_Test(&requests[i], &finished, MPI_STATUS_IGNORE);
      if (requests[i] != MPI_REQUEST_NULL && !finished &&
          std::find(silent.begin(), silent.end(), peers[i]) == silent.end()) {
        silent.push_back(peers[i]);
      }
    }
    if (silent.empty()) return "the peers";
    std::sort(silent.begin(), silent.end());
    std::string who;
    for (int p : silent) who += (who.empty() ? "" : ", ") + std::to_string(p);
    return "rank" + std::string(silent.size() == 1 ? " " : "s ") + who + " of '" + name_ + "'";
  }

  [[noreturn]] void fail(const char* op, const std::string& why) const {
    int world_rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    std::fprintf(stderr, "dsk: error: %s on communicator '%s' (rank %d of %d, world rank %d): %s; aborting the job\n",
                 op, name_.c_str(), rank_, size_, world_rank, why.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::abort();
  }

  static constexpr int kAllToAllTag = 7301;
  MPI_Comm comm_;
  std::string name_;
  double timeout_s_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
  if (provided < MPI_THREAD_SERIALIZED) {
    std::fprintf(stderr, "dsk: error: the MPI library does not provide MPI_THREAD_SERIALIZED\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
}

MpiRuntime::~MpiRuntime() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::unique_ptr<Communicator> MpiRuntime::world(double timeout_s) const {
  MPI_Comm comm;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  return std::make_unique<MpiCommunicator>(comm, "world", timeout_s);
}

void MpiRuntime::abort_job(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();
}

}  // namespace dsk::dist
