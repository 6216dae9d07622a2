/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_CONNECT_H
#define __VIGIL_CONNECT_H

#include "vigil.h"
#include "net.h"

#define CONNECT_PORTS_MAX 8	/* destination ports one filter holds (-P) */

/*
 * How an active connect ended; user space shows the names.  Only the
 * state-change hook sees an outcome: the cgroup fallback runs before the
 * SYN is sent and always reports UNKNOWN.
 */
enum connect_result {
	CONNECT_RESULT_UNKNOWN = 0,	/* not observed (cgroup mode, or no room to wait) */
	CONNECT_RESULT_ESTABLISHED = 1,
	CONNECT_RESULT_REFUSED = 2,	/* RST in answer to the SYN (ECONNREFUSED) */
	CONNECT_RESULT_TIMED_OUT = 3,	/* no answer before the SYN retries ran out */
	CONNECT_RESULT_ABORTED = 4,	/* closed locally before any answer, sk_err 0 */
	CONNECT_RESULT_ERROR = 5,	/* another error, in `error` (ICMP unreachable...) */
};

/*
 * One active TCP connect (IPv4 or IPv6).  The header is the connecting
 * task's, taken when the SYN was about to be sent (ts_ns is then), even
 * though the answer arrives later in softirq context.  Addresses are the
 * sock's when the outcome was known (the source port is chosen after the
 * header is taken).  In cgroup mode laddr/lport are those of an explicit
 * bind() only.
 */
struct connect_event {
	struct vigil_header hdr;
	struct vigil_sockaddrs addrs;
	__u64 latency_ns;		/* SYN_SENT to the outcome; 0 when unknown */
	enum connect_result result;	/* 4 bytes */
	__s32 error;			/* sk_err (positive errno) of a failed connect, else 0 */
};

#endif /* __VIGIL_CONNECT_H */
