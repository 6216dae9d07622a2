/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_LISTEN_H
#define __VIGIL_LISTEN_H

#include "vigil.h"
#include "net.h"

#define LISTEN_EXE_SIZE 512

/*
 * Where a bind or listen record was observed; it says how to read the
 * port.  User space shows the names ("syscall", "state", ...).
 */
enum listen_origin {
	/* at the return of a successful bind(2)/listen(2): the address and
	 * port the socket got (a port 0 bind is shown with its chosen port) */
	LISTEN_ORIGIN_SYSCALL = 0,
	/* a socket that entered TCP_LISTEN outside listen(2) (io_uring,
	 * in-kernel listeners): seen at the state change, before an
	 * unbound socket is given its port (lport 0, flag "partial") */
	LISTEN_ORIGIN_STATE = 1,
	/* cgroup bind hook: what was asked for, before the kernel checks it;
	 * port 0 means "any", not yet chosen; the bind may still fail */
	LISTEN_ORIGIN_CGROUP = 2,
	/* not from the kernel: a socket already bound or listening when
	 * Vigil started, read from /proc by user space */
	LISTEN_ORIGIN_SNAPSHOT = 3,
};

/*
 * A socket bound to a local address (bind(2) on TCP, UDP, SCTP, MPTCP).
 * `exe` is the absolute path of the binder's executable, resolved in the
 * kernel (bpf/path.bpf.h); the ring record ends after its NUL, so `exe`
 * must stay the last member.
 */
struct bind_event {
	struct vigil_header hdr;
	struct vigil_sockaddrs addrs;
	enum listen_origin origin;
	__u32 __pad;
	char exe[LISTEN_EXE_SIZE];
};

/* A socket that started listening; same layout plus the accept backlog. */
struct listen_event {
	struct vigil_header hdr;
	struct vigil_sockaddrs addrs;
	enum listen_origin origin;
	__u32 backlog;		/* sk_max_ack_backlog: listen()'s, capped at somaxconn */
	char exe[LISTEN_EXE_SIZE];
};

#endif /* __VIGIL_LISTEN_H */
