#pragma once
// Every NCCL version check of dsk, in one place. Code elsewhere tests only
// the DSK_NCCL_HAS_* macros below, never NCCL_VERSION_CODE.
#include <nccl.h>

#if !defined(NCCL_VERSION_CODE) || !defined(NCCL_VERSION)
#error "nccl.h without NCCL_VERSION_CODE: dsk needs NCCL >= 2.10"
#endif

// 2.10: ncclSend/ncclRecv (2.7), ncclCommGetAsyncError/ncclCommAbort (2.4),
// ncclBfloat16 (2.10), and the X*10000+Y*100+Z version scheme (2.9).
#define DSK_NCCL_MIN_VERSION_CODE NCCL_VERSION(2, 10, 0)
static_assert(NCCL_VERSION_CODE >= DSK_NCCL_MIN_VERSION_CODE, "dsk needs NCCL >= 2.10");

// ncclGetLastError(comm): the library's own text for the last failure.
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
#define DSK_NCCL_HAS_GET_LAST_ERROR 1
#else
#define DSK_NCCL_HAS_GET_LAST_ERROR 0
#endif

// ncclCommInitRankConfig with config.blocking = 0, ncclInProgress and
// ncclCommFinalize: init and collectives return at once, so a missing peer
// can be waited for against a deadline and the communicator aborted.
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
#define DSK_NCCL_HAS_NONBLOCKING 1
#else
#define DSK_NCCL_HAS_NONBLOCKING 0
#endif

// ncclCommSplit. Without it, split makes a fresh unique id per color and
// broadcasts it over the bootstrap communicator split the same way.
// -DDSK_NCCL_DISABLE_COMM_SPLIT compiles that fallback on a newer NCCL.
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0) && !defined(DSK_NCCL_DISABLE_COMM_SPLIT)
#define DSK_NCCL_HAS_COMM_SPLIT 1
#else
#define DSK_NCCL_HAS_COMM_SPLIT 0
#endif

namespace dsk::dist {
// ncclInProgress exists only with non-blocking communicators.
inline bool nccl_in_progress(ncclResult_t result) {
#if DSK_NCCL_HAS_NONBLOCKING
  return result == ncclInProgress;
#else
  (void)result;
  return false;
#endif
}
}  // namespace dsk::dist
