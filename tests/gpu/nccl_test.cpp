// NCCL backend against exact expected values, at 1 and 2 ranks (ctest
// gpu_nccl_np*). NcclComm is tested on cudaMalloc'd buffers, which needs only
// the CUDA runtime; the Communicator adapter on CUDA tensors also needs a
// LibTorch with CUDA and skips without one. Without a device every test skips.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "dist/nccl/nccl_communicator.h"
#include "tests/gpu/gpu_test_env.h"

namespace dsk::testing {
namespace {

#define ASSERT_CUDA(call)                                              \
  do {                                                                 \
    const cudaError_t dsk_error_ = (call);                             \
    ASSERT_EQ(dsk_error_, cudaSuccess) << #call ": " << cudaGetErrorString(dsk_error_); \
  } while (0)

// Device memory for `n` elements of T, freed on destruction.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t n) : n_(n) {
    if (cudaMalloc(reinterpret_cast<void**>(&ptr_), std::max<std::size_t>(n, 1) * sizeof(T)) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }
  cudaError_t upload(const std::vector<T>& host) {
    return cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    if (cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost) != cudaSuccess) host.clear();
    return host;
  }

 private:
  T* ptr_ = nullptr;
  std::size_t n_;
};

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DSK_REQUIRE_GPU();
    ASSERT_CUDA(cudaSetDevice(gpu_env().device));
    comm_ = std::make_unique<dist::NcclComm>(test_world(), gpu_env().device, /*timeout_s=*/60, "nccl-test");
    rank_ = comm_->rank();
    size_ = comm_->size();
  }
  std::unique_ptr<dist::NcclComm> comm_;
  int rank_ = 0;
  int size_ = 1;
};

TEST_F(NcclTest, RanksMirrorTheBootstrap) {
  EXPECT_EQ(rank_, test_world().rank());
  EXPECT_EQ(size_, test_world().size());
  EXPECT_EQ(comm_->device(), gpu_env().device);
}

TEST_F(NcclTest, AllReduceSumOfRankIntegersIsExact) {
  constexpr int n = 1000;
  std::vector<float> host(n);
  for (int i = 0; i < n; ++i) host[i] = static_cast<float>(rank_ * 1000 + i);
  DeviceBuffer<float> buf(n);
  ASSERT_NE(buf.get(), nullptr);
  ASSERT_CUDA(buf.upload(host));
  comm_->all_reduce(buf.get(), n, ncclFloat32, ncclSum);
  const std::vector<float> out = buf.download();
  ASSERT_EQ(out.size(), static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(out[i], static_cast<float>(i * size_ + 1000 * size_ * (size_ - 1) / 2)) << "element " << i;
  }
}

TEST_F(NcclTest, AllReduceMaxAndMinOverInt64) {
  constexpr int n = 17;
  std::vector<int64_t> host(n);
  for (int i = 0; i < n; ++i) host[i] = int64_t{rank_} * 7 + i + (int64_t{1} << 40);
  DeviceBuffer<int64_t> max_buf(n), min_buf(n);
  ASSERT_CUDA(max_buf.upload(host));
  ASSERT_CUDA(min_buf.upload(host));
  comm_->all_reduce(max_buf.get(), n, ncclInt64, ncclMax);
  comm_->all_reduce(min_buf.get(), n, ncclInt64, ncclMin);
  const auto max_out = max_buf.download(), min_out = min_buf.download();
  ASSERT_EQ(max_out.size(), static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(max_out[i], int64_t{size_ - 1} * 7 + i + (int64_t{1} << 40));
    EXPECT_EQ(min_out[i], i + (int64_t{1} << 40));
  }
}

// Rows from s to d: (s + 2d + 1) mod 3, so zero counts occur from 2 ranks on
// and the counts are uneven. Each value encodes (source, destination, row,
// column), so a misrouted or misplaced row shows.
int64_t rows_between(int source, int dest) { return (source + 2 * dest + 1) % 3; }
int32_t payload(int source, int dest, int64_t row, int col) {
  return static_cast<int32_t>(source * 100000 + dest * 10000 + row * 10 + col);
}

TEST_F(NcclTest, AllToAllVUnevenAndZeroCountsRouteEveryRow) {
  constexpr int width = 3;
  std::vector<std::size_t> send_counts(size_), recv_counts(size_);
  std::vector<int32_t> send;
  for (int d = 0; d < size_; ++d) {
    send_counts[d] = rows_between(rank_, d) * width;
    recv_counts[d] = rows_between(d, rank_) * width;
    for (int64_t j = 0; j < rows_between(rank_, d); ++j)
      for (int c = 0; c < width; ++c) send.push_back(payload(rank_, d, j, c));
  }
  std::vector<int32_t> expected;
  for (int s = 0; s < size_; ++s)
    for (int64_t j = 0; j < rows_between(s, rank_); ++j)
      for (int c = 0; c < width; ++c) expected.push_back(payload(s, rank_, j, c));
  DeviceBuffer<int32_t> send_buf(send.size()), recv_buf(expected.size());
  ASSERT_CUDA(send_buf.upload(send));
  ASSERT_CUDA(cudaMemset(recv_buf.get(), 0xff, std::max<std::size_t>(expected.size(), 1) * sizeof(int32_t)));
  comm_->all_to_all_v(send_buf.get(), send_counts, recv_buf.get(), recv_counts, ncclInt32);
  EXPECT_EQ(recv_buf.download(), expected);
}

TEST_F(NcclTest, AllGatherInRankOrder) {
  constexpr int n = 5;
  std::vector<int64_t> mine(n), expected;
  for (int i = 0; i < n; ++i) mine[i] = rank_ * 100 + i;
  for (int r = 0; r < size_; ++r)
    for (int i = 0; i < n; ++i) expected.push_back(r * 100 + i);
  DeviceBuffer<int64_t> send(n), recv(n * size_);
  ASSERT_CUDA(send.upload(mine));
  comm_->all_gather(send.get(), recv.get(), n, ncclInt64);
  EXPECT_EQ(recv.download(), expected);
}

TEST_F(NcclTest, BroadcastFromTheLastRank) {
  constexpr int n = 9;
  const int root = size_ - 1;
  std::vector<double> host(n, -1.0), expected(n);
  for (int i = 0; i < n; ++i) expected[i] = 7.0 * i + 1.0;
  if (rank_ == root) host = expected;
  DeviceBuffer<double> buf(n);
  ASSERT_CUDA(buf.upload(host));
  comm_->broadcast(buf.get(), n, ncclFloat64, root);
  EXPECT_EQ(buf.download(), expected);
}

TEST_F(NcclTest, BarrierReturnsOnEveryRank) {
  for (int i = 0; i < 3; ++i) comm_->barrier();
  SUCCEED();
}

TEST_F(NcclTest, SplitOrdersByKeyWithinColor) {
  // Color = parity; key = -rank, so each group is in descending world rank.
  const int color = rank_ % 2;
  auto sub = comm_->split(color, -rank_, "parity");
  std::vector<int64_t> members;
  for (int r = size_ - 1; r >= 0; --r)
    if (r % 2 == color) members.push_back(r);
  ASSERT_EQ(sub->size(), static_cast<int>(members.size()));
  int expected_rank = 0;
  while (members[expected_rank] != rank_) ++expected_rank;
  EXPECT_EQ(sub->rank(), expected_rank);
  EXPECT_EQ(sub->name(), "parity");

  std::vector<int64_t> mine = {rank_};
  DeviceBuffer<int64_t> send(1), recv(members.size());
  ASSERT_CUDA(send.upload(mine));
  sub->all_gather(send.get(), recv.get(), 1, ncclInt64);
  EXPECT_EQ(recv.download(), members);

  DeviceBuffer<int64_t> sum(1);
  ASSERT_CUDA(sum.upload(mine));
  sub->all_reduce(sum.get(), 1, ncclInt64, ncclSum);
  int64_t expected_sum = 0;
  for (int64_t m : members) expected_sum += m;
  EXPECT_EQ(sum.download(), std::vector<int64_t>{expected_sum});
  comm_->barrier();  // the parent still works after the split
}

// The dist::Communicator adapter on CUDA tensors (cudaMalloc'd memory wrapped
// by at::from_blob). Needs a LibTorch built with CUDA.
class NcclCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DSK_REQUIRE_GPU();
    if (!at::hasCUDA()) GTEST_SKIP() << "this LibTorch has no CUDA: CUDA tensors cannot be made";
    device_ = gpu_env().device;
    ASSERT_CUDA(cudaSetDevice(device_));
    comm_ = dist::make_nccl_communicator(test_world(), device_, /*timeout_s=*/60, "nccl-tensor-test");
  }
  // A CUDA tensor over cudaMalloc'd memory holding `host`.
  at::Tensor to_device(const at::Tensor& host) {
    void* ptr = nullptr;
    const std::size_t bytes = std::max<std::size_t>(host.numel() * host.element_size(), 1);
    if (cudaMalloc(&ptr, bytes) != cudaSuccess) return {};
    cudaMemcpy(ptr, host.data_ptr(), host.numel() * host.element_size(), cudaMemcpyHostToDevice);
    return at::from_blob(ptr, host.sizes(), [](void* p) { cudaFree(p); },
                         at::TensorOptions().dtype(host.scalar_type()).device(at::Device(at::kCUDA, device_)));
  }
  int device_ = 0;
  std::unique_ptr<dist::Communicator> comm_;
};

TEST_F(NcclCommunicatorTest, AllReduceAndAllToAllVOnTensors) {
  const int rank = comm_->rank(), size = comm_->size();
  at::Tensor t = to_device(at::arange(6, at::kLong) + rank * 10);
  ASSERT_TRUE(t.defined() && t.is_cuda());
  comm_->all_reduce(t, dist::ReduceOp::kSum);
  EXPECT_TRUE(at::equal(t.cpu(), at::arange(6, at::kLong) * size + 10 * size * (size - 1) / 2));

  constexpr int width = 2;
  std::vector<int64_t> send_rows(size), recv_rows(size);
  std::vector<int32_t> send, expected;
  for (int d = 0; d < size; ++d) {
    send_rows[d] = rows_between(rank, d);
    recv_rows[d] = rows_between(d, rank);
    for (int64_t j = 0; j < send_rows[d]; ++j)
      for (int c = 0; c < width; ++c) send.push_back(payload(rank, d, j, c));
  }
  for (int s = 0; s < size; ++s)
    for (int64_t j = 0; j < rows_between(s, rank); ++j)
      for (int c = 0; c < width; ++c) expected.push_back(payload(s, rank, j, c));
  const int64_t send_total = static_cast<int64_t>(send.size()) / width;
  at::Tensor send_host = at::from_blob(send.data(), {send_total, width}, at::kInt).clone();
  at::Tensor recv = comm_->all_to_all_v(to_device(send_host), send_rows, recv_rows);
  ASSERT_TRUE(recv.is_cuda());
  at::Tensor recv_host = recv.cpu();
  ASSERT_EQ(recv_host.numel(), static_cast<int64_t>(expected.size()));
  EXPECT_EQ(std::vector<int32_t>(recv_host.data_ptr<int32_t>(), recv_host.data_ptr<int32_t>() + recv_host.numel()),
            expected);

  at::Tensor gathered = comm_->all_gather(to_device(at::full({2}, rank, at::kFloat))).cpu();
  ASSERT_EQ(gathered.size(0), size);
  for (int r = 0; r < size; ++r) EXPECT_EQ(gathered[r][1].item<float>(), static_cast<float>(r));

  auto sub = comm_->split(rank % 2, rank, "parity");
  at::Tensor one = to_device(at::ones({1}, at::kFloat));
  sub->all_reduce(one, dist::ReduceOp::kSum);
  EXPECT_EQ(one.cpu().item<float>(), static_cast<float>(sub->size()));
}

TEST_F(NcclCommunicatorTest, CpuTensorsAreRejectedBeforeAnythingIsEnqueued) {
  at::Tensor cpu = at::zeros({4});
  EXPECT_THROW(comm_->all_reduce(cpu, dist::ReduceOp::kSum), std::invalid_argument);
  comm_->barrier();
}

}  // namespace
}  // namespace dsk::testing
