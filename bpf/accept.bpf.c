// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Accept sensor: every TCP connection a process accepts (IPv4, IPv6).
 *
 *   sys_exit_accept4, sys_exit_accept   in the accepting process: the
 *                                       returned fd -> its sock -> addresses
 *
 * The handshake completes earlier in softirq, where no process is known;
 * at syscall exit the task is the one that took the connection.  The
 * addresses come from the new sock in kernel memory, not from the
 * sockaddr the caller passed (user memory, optional, changeable).
 *
 * Hot path of accept-heavy servers (the anchor benchmark): failed accepts
 * leave after one compare, non-TCP sockets after the fd walk, and a TCP
 * accept costs a few kernel reads and one ring record.
 */
#include "common.bpf.h"
#include "core_fixes.bpf.h"
#include "net.bpf.h"
#include "accept.h"

VIGIL_RECORD(accept_event);

/* Filter set by user space before load; 0 = every process. */
const volatile __u32 targ_pid = 0;

/*
 * The local port of a connection the client reset before accept()
 * returned.  The reset (tcp_done -> inet_put_port) unhashes the new sock
 * and zeroes its skc_num, but the sock keeps its own copy of the port in
 * inet_sport (set from the listener's port when the sock was cloned, and
 * not cleared on unhash): the port the client connected to.  Only read on
 * this rare path; if even that is 0 the record says so (PARTIAL).
 */
static __always_inline __u16 reset_local_port(struct sock *sk, struct vigil_header *hdr)
{
	__u16 port = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));

	if (!port) {
		hdr->flags |= VIGIL_F_PARTIAL;
		stat_inc(VIGIL_EV_ACCEPT, VIGIL_STAT_PARTIAL);
	}
	return port;
}

static __always_inline int accept_exit(long ret)
{
	struct task_struct *task;
	struct accept_event *e;
	struct sock *sk;
	__u16 family;

	if (ret < 0)
		return 0;	/* EAGAIN on non-blocking listeners is the common case */
	if (targ_pid && (bpf_get_current_pid_tgid() >> 32) != targ_pid)
		return 0;
	task = (struct task_struct *)bpf_get_current_task();
	sk = sock_from_fd(task, ret);
	if (!sk)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if ((family != VIGIL_AF_INET && family != VIGIL_AF_INET6) ||
	    sock_protocol(sk) != IPPROTO_TCP)
		return 0;	/* unix, MPTCP, ... */
	e = reserve_event_class(VIGIL_EV_ACCEPT, sizeof(*e), VIGIL_RING_BULK);
	if (!e)
		return 0;
	fill_header(&e->hdr, VIGIL_EV_ACCEPT);
	read_sockaddrs(sk, &e->addrs);
	if (!e->addrs.lport)
		e->addrs.lport = reset_local_port(sk, &e->hdr);
	e->fd = ret;
	e->__pad = 0;
	submit_event(&e->hdr, sizeof(*e));
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int handle_accept4_exit(struct trace_event_raw_sys_exit *ctx)
{
	return accept_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int handle_accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	return accept_exit(ctx->ret);
}
