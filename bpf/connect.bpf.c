// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Connect sensor: active TCP connects (IPv4, IPv6) with their outcome.
 *
 *   sock/inet_sock_set_state  (preferred)
 *       CLOSE -> SYN_SENT       tcp_v{4,6}_connect, in the caller's context:
 *                               keep its header, keyed by the sock
 *       SYN_SENT -> ESTABLISHED the answer, usually in softirq: emit the
 *       SYN_SENT -> CLOSE       kept header with the outcome (sk_err)
 *   cgroup/connect4 + connect6  (fallback)
 *                               connect() itself, before any SYN: who and
 *                               where, outcome unknown
 *
 * Only connection set-up is traced, never a send: a state change happens
 * a few times per connection.  Filters (pid, destination ports) are
 * applied where the connect starts, so a filtered connect leaves nothing
 * in the map.
 */
#include "common.bpf.h"
#include "core_fixes.bpf.h"
#include "net.bpf.h"
#include "connect.h"

VIGIL_RECORD(connect_event);
enum connect_result *__vigil_enum_connect_result __attribute__((unused));

#define VIGIL_ECONNREFUSED	111
#define VIGIL_ETIMEDOUT		110

/* Filters set by user space before load; 0 = everything. */
const volatile __u32 targ_pid = 0;
const volatile __u32 targ_nports = 0;
const volatile __u16 targ_ports[CONNECT_PORTS_MAX] = {};

/*
 * Connects waiting for their answer: the connecting task's header (ts_ns
 * is the connect time).  Every TCP sock passes through CLOSE before it is
 * freed, so entries do not outlive their sock; a full map is not silent
 * (the connect is sent at once, outcome unknown, PARTIAL).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);			/* struct sock * */
	__type(value, struct vigil_header);
} connecting SEC(".maps");

static __always_inline bool pid_filtered(void)
{
	return targ_pid && (bpf_get_current_pid_tgid() >> 32) != targ_pid;
}

static __always_inline bool port_wanted(__u16 port)
{
	if (!targ_nports)
		return true;
#pragma unroll
	for (int i = 0; i < CONNECT_PORTS_MAX; i++) {
		if (i >= targ_nports)
			break;
		if (targ_ports[i] == port)
			return true;
	}
	return false;
}

/* Addresses as the tracepoint copied them from the sock (ports host order). */
static __always_inline void tp_sockaddrs(struct trace_event_raw_inet_sock_set_state *ctx,
					 struct vigil_sockaddrs *a)
{
	__builtin_memset(a, 0, sizeof(*a));
	a->family = ctx->family;
	a->protocol = ctx->protocol;
	a->lport = ctx->sport;
	a->rport = ctx->dport;
	if (a->family == VIGIL_AF_INET) {
		bpf_probe_read_kernel(a->laddr, 4, ctx->saddr);
		bpf_probe_read_kernel(a->raddr, 4, ctx->daddr);
	} else {
		bpf_probe_read_kernel(a->laddr, 16, ctx->saddr_v6);
		bpf_probe_read_kernel(a->raddr, 16, ctx->daddr_v6);
	}
}

static __always_inline void emit(struct trace_event_raw_inet_sock_set_state *ctx,
				 const struct vigil_header *hdr, enum connect_result result,
				 __s32 error, __u64 latency_ns)
{
	struct connect_event *e = reserve_event_class(VIGIL_EV_CONNECT, sizeof(*e), VIGIL_RING_BULK);

	if (!e)
		return;
	e->hdr = *hdr;
	tp_sockaddrs(ctx, &e->addrs);
	e->latency_ns = latency_ns;
	e->result = result;
	e->error = error;
	submit_event(&e->hdr, sizeof(*e));
}

/* CLOSE -> SYN_SENT: still in connect(), in the caller's context. */
static __always_inline int connect_start(struct trace_event_raw_inet_sock_set_state *ctx)
{
	__u64 sk = (__u64)ctx->skaddr;
	struct vigil_header hdr;

	if (pid_filtered() || !port_wanted(ctx->dport))
		return 0;
	fill_header(&hdr, VIGIL_EV_CONNECT);
	if (bpf_map_update_elem(&connecting, &sk, &hdr, BPF_ANY)) {
		/* no room to wait for the answer: report the connect now */
		hdr.flags |= VIGIL_F_PARTIAL;
		stat_inc(VIGIL_EV_CONNECT, VIGIL_STAT_PARTIAL);
		emit(ctx, &hdr, CONNECT_RESULT_UNKNOWN, 0, 0);
	}
	return 0;
}

/* The outcome of a connect we saw start; any context. */
static __always_inline int connect_done(struct trace_event_raw_inet_sock_set_state *ctx,
					int newstate)
{
	__u64 sk = (__u64)ctx->skaddr;
	struct vigil_header *hdr = bpf_map_lookup_elem(&connecting, &sk);
	enum connect_result result = CONNECT_RESULT_ESTABLISHED;
	__s32 error = 0;

	if (!hdr)
		return 0;	/* not ours: a passive sock, or filtered */
	if (newstate == TCP_CLOSE) {
		/* tcp_reset()/tcp_write_err() set sk_err before tcp_done() */
		error = BPF_CORE_READ((struct sock *)sk, sk_err);
		if (error == VIGIL_ECONNREFUSED)
			result = CONNECT_RESULT_REFUSED;
		else if (error == VIGIL_ETIMEDOUT)
			result = CONNECT_RESULT_TIMED_OUT;
		else if (error == 0)
			result = CONNECT_RESULT_ABORTED;
		else
			result = CONNECT_RESULT_ERROR;
	}
	emit(ctx, hdr, result, error, bpf_ktime_get_boot_ns() - hdr->ts_ns);
	bpf_map_delete_elem(&connecting, &sk);
	return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int handle_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	int oldstate = ctx->oldstate;
	int newstate = ctx->newstate;

	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT)
		return connect_start(ctx);
	/*
	 * SYN_RECV: a simultaneous open (SYN_SENT -> SYN_RECV -> ESTABLISHED)
	 * is decided one step later; passive socks are not in the map.
	 */
	if ((oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV) &&
	    (newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE))
		return connect_done(ctx, newstate);
	return 0;
}

/*
 * Fallback: connect() on a TCP socket, before the kernel sends anything.
 * The destination is the kernel's copy of the caller's sockaddr (the ctx),
 * not user memory.  Always allow (return 1): this is a sensor, not a policy.
 */
static __always_inline struct connect_event *cgroup_start(struct bpf_sock_addr *ctx, __u16 rport)
{
	struct connect_event *e;

	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return NULL;
	if (pid_filtered() || !port_wanted(rport))
		return NULL;
	e = reserve_event_class(VIGIL_EV_CONNECT, sizeof(*e), VIGIL_RING_BULK);
	if (!e)
		return NULL;
	fill_header(&e->hdr, VIGIL_EV_CONNECT);
	__builtin_memset(&e->addrs, 0, sizeof(e->addrs));
	e->addrs.protocol = IPPROTO_TCP;
	e->addrs.rport = rport;
	e->latency_ns = 0;
	e->result = CONNECT_RESULT_UNKNOWN;
	e->error = 0;
	return e;
}

SEC("cgroup/connect4")
int cgroup_connect4(struct bpf_sock_addr *ctx)
{
	__u16 rport = bpf_ntohs((__u16)ctx->user_port);
	struct connect_event *e = cgroup_start(ctx, rport);
	struct bpf_sock *sk;
	__u32 ip;

	if (!e)
		return 1;
	e->addrs.family = VIGIL_AF_INET;
	ip = ctx->user_ip4;
	__builtin_memcpy(e->addrs.raddr, &ip, 4);
	sk = ctx->sk;
	if (sk) {	/* set only by an explicit bind() this early */
		ip = sk->src_ip4;
		__builtin_memcpy(e->addrs.laddr, &ip, 4);
		e->addrs.lport = sk->src_port;
	}
	submit_event(&e->hdr, sizeof(*e));
	return 1;
}

SEC("cgroup/connect6")
int cgroup_connect6(struct bpf_sock_addr *ctx)
{
	__u16 rport = bpf_ntohs((__u16)ctx->user_port);
	struct connect_event *e = cgroup_start(ctx, rport);
	struct bpf_sock *sk;
	__u32 ip6[4];

	if (!e)
		return 1;
	e->addrs.family = VIGIL_AF_INET6;
	/* the verifier takes only 4-byte loads at constant offsets of the ctx */
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	__builtin_memcpy(e->addrs.raddr, ip6, 16);
	sk = ctx->sk;
	if (sk) {
		ip6[0] = sk->src_ip6[0];
		ip6[1] = sk->src_ip6[1];
		ip6[2] = sk->src_ip6[2];
		ip6[3] = sk->src_ip6[3];
		__builtin_memcpy(e->addrs.laddr, ip6, 16);
		e->addrs.lport = sk->src_port;
	}
	submit_event(&e->hdr, sizeof(*e));
	return 1;
}
