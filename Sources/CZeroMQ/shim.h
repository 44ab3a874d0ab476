// CZeroMQ: libzmq (Debian libzmq3-dev) for Swift.
// Wraps what Swift cannot call directly (variadic or macro-only API); keep it small.
#ifndef CZEROMQ_SHIM_H
#define CZEROMQ_SHIM_H
#include <zmq.h>
#include <errno.h>

static inline int CZeroMQ_errno(void) { return errno; }

#if defined(__GLIBC__)
#include <malloc.h>
/// Allocator settings for large ZeroMQ messages (SaliencyStream's MessageMemory explains why):
/// keep freed memory instead of trimming it back to the kernel after each message. 1 if applied.
static inline int CZeroMQ_keep_freed_memory(int trimThreshold, int mmapThreshold) {
    return mallopt(M_TRIM_THRESHOLD, trimThreshold) == 1 && mallopt(M_MMAP_THRESHOLD, mmapThreshold) == 1;
}
#else
static inline int CZeroMQ_keep_freed_memory(int trimThreshold, int mmapThreshold) { (void)trimThreshold; (void)mmapThreshold; return 0; }
#endif
#endif
