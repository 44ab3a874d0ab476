// CZeroMQ: libzmq (Debian libzmq3-dev) for Swift.
// Wraps what Swift cannot call directly (variadic or macro-only API); keep it small.
#ifndef CZEROMQ_SHIM_H
#define CZEROMQ_SHIM_H
#include <zmq.h>
#include <errno.h>

static inline int CZeroMQ_errno(void) { return errno; }
#endif
