/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_ACCEPT_H
#define __VIGIL_ACCEPT_H

#include "vigil.h"
#include "net.h"

/*
 * One accepted TCP connection (IPv4 or IPv6), in the context of the
 * process that called accept()/accept4(), not of the softirq that
 * completed the handshake.  laddr/lport are the server's side, raddr/rport
 * the client's, read from the new socket in kernel memory.
 */
struct accept_event {
	struct vigil_header hdr;
	struct vigil_sockaddrs addrs;
	__s32 fd;		/* the new socket's descriptor in the accepting process */
	__u32 __pad;
};

#endif /* __VIGIL_ACCEPT_H */
