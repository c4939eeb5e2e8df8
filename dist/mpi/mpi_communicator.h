#pragma once
// Open MPI (or any MPI-3) backend for CPU tensors. Every collective is issued
// non-blocking and polled against the communicator's deadline (see the
// contract in dist/communicator.h).
#include <memory>
#include <string>

#include "dist/communicator.h"

namespace dsk::dist {

// Initialises MPI (MPI_THREAD_SERIALIZED: only the training thread talks to
// MPI) on construction and finalises it on destruction. One per process,
// owned by main().
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;
  // A communicator over a duplicate of MPI_COMM_WORLD.
  std::unique_ptr<Communicator> world(double timeout_s) const;
  // Ends every rank of the job with `code`; used when one rank fails alone.
  [[noreturn]] static void abort_job(int code);
};

}  // namespace dsk::dist
