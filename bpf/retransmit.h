/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_RETRANSMIT_H
#define __VIGIL_RETRANSMIT_H

#include "vigil.h"
#include "net.h"

/*
 * One TCP retransmit.  Retransmits are mostly sent from timers and
 * softirqs: the header names whatever task was on the CPU (often none of
 * the flow's business, pid 0 for idle), not the socket's owner.
 * laddr/lport are this host's end of the flow.
 */
struct retransmit_event {
	struct vigil_header hdr;
	struct vigil_sockaddrs addrs;
	__u32 state;		/* TCP state (include/net/tcp_states.h numbering) */
	__s32 err;		/* 0 when the segment went out, else -errno; 0 on
				 * kernels whose tracepoint has no err field */
};

/*
 * Key of the in-kernel count (vigil tcpretrans -c): one flow, this host's
 * end first.  protocol is always TCP.
 */
struct retransmit_flow {
	struct vigil_sockaddrs addrs;
};

#endif /* __VIGIL_RETRANSMIT_H */
