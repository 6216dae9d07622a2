// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Bind and listen sensors: which process bound which port, and which
 * sockets started listening ("unusual listening ports").
 *
 * bind (every successful bind of an inet TCP/UDP/SCTP/MPTCP socket):
 *   syscalls   sys_enter_bind keeps the sock behind the fd (per thread);
 *              sys_exit_bind, on success, reads the address and port the
 *              kernel gave it (port 0 binds report the chosen port)
 *   cgroup     cgroup/bind4 + cgroup/bind6: the address and port asked
 *              for, before the kernel checks them (port 0: not chosen
 *              yet; a bind refused afterwards is still reported); also
 *              sees binds made through io_uring, which skip the syscall
 *
 * listen (every inet socket entering TCP_LISTEN):
 *   tp_btf/raw_tp inet_sock_set_state, with sys_enter/exit_listen
 *              listen(2) is reported at its return, once it succeeded
 *              (the kernel sets TCP_LISTEN *before* it picks the port of
 *              an unbound socket, and may still fail with EADDRINUSE
 *              after it); the state change reports only listens that
 *              happen outside listen(2): io_uring's IORING_OP_LISTEN
 *              and in-kernel listeners, which no syscall hook sees
 *   syscalls   sys_enter/exit_listen alone: listen(2) only
 *
 * A listen() on a socket that already listens only changes its backlog:
 * it opens nothing and is not reported.
 *
 * Records are built in a per-CPU scratch (with the 512-byte path they do
 * not fit the stack) and sent cut after the executable's NUL.
 */
#include "common.bpf.h"
#include "core_fixes.bpf.h"
#include "net.bpf.h"
#include "path.bpf.h"
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "listen.h"

VIGIL_RECORD(bind_event);
VIGIL_RECORD(listen_event);
enum listen_origin *__vigil_enum_origin __attribute__((unused));

/* Only this process (tgid); 0 = every process.  Set by `vigil listen -p`. */
const volatile __u32 targ_pid = 0;

/* The sock a thread is binding or listening on, from enter to exit. */
struct sock_call {
	struct sock *sk;
};

/*
 * LRU: a thread killed inside the syscall never reaches sys_exit; its
 * entry is evicted instead of filling the map.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);		/* tid */
	__type(value, struct sock_call);
} sock_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bind_event);
} bind_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct listen_event);
} listen_scratch SEC(".maps");

static __always_inline bool pid_filtered(void)
{
	return targ_pid && (bpf_get_current_pid_tgid() >> 32) != targ_pid;
}

static __always_inline bool inet_family(__u16 family)
{
	return family == VIGIL_AF_INET || family == VIGIL_AF_INET6;
}

/* Transports with ports; raw and ping sockets "bind" too, portless. */
static __always_inline bool port_protocol(__u32 protocol)
{
	return protocol == IPPROTO_TCP || protocol == IPPROTO_UDP ||
	       protocol == IPPROTO_SCTP || protocol == IPPROTO_MPTCP;
}

/*
 * The caller's executable into `exe`; returns the bytes to send of it
 * (with its NUL), so the record ends there.  Kernel threads have none:
 * an empty string, not an error.
 */
static __always_inline __u32 fill_exe(char *exe, struct vigil_header *hdr)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	long n = read_task_exe(task, exe, LISTEN_EXE_SIZE, &hdr->flags);
	__u32 len;

	if (n < 0 && n != -ENOENT) {
		hdr->flags |= VIGIL_F_PARTIAL;
		stat_inc(hdr->kind, VIGIL_STAT_PARTIAL);
	}
	if (n <= 0)
		return 1;
	/*
	 * The bound again, on the 32-bit value the record size is made of, and
	 * kept by barrier_var() from being folded into the signed checks
	 * above: 6.1's verifier loses a signed long's bounds through the
	 * truncation and rejected bind_exit ("R3 unbounded memory access").
	 */
	len = n;
	barrier_var(len);
	if (len > LISTEN_EXE_SIZE)
		len = LISTEN_EXE_SIZE;
	return len;
}

/* -- bind ------------------------------------------------------------------ */

static __always_inline struct bind_event *start_bind(enum listen_origin origin)
{
	__u32 zero = 0;
	struct bind_event *e = bpf_map_lookup_elem(&bind_scratch, &zero);

	if (!e)
		return NULL;
	fill_header(&e->hdr, VIGIL_EV_BIND);
	e->origin = origin;
	e->__pad = 0;
	return e;
}

static __always_inline void send_bind(struct bind_event *e)
{
	__u32 n = fill_exe(e->exe, &e->hdr);

	/* any user can bind in a loop: shed first, like connect/accept */
	output_event_class(&e->hdr, offsetof(struct bind_event, exe) + n, VIGIL_RING_BULK);
}

/* The IPv4/IPv6 sock behind the call's fd (args[0]), unless filtered out. */
static __always_inline struct sock *inet_sock_of_call(struct trace_event_raw_sys_enter *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct sock *sk;

	if (pid_filtered())
		return NULL;
	sk = sock_from_fd(task, (int)ctx->args[0]);
	if (!sk || !inet_family(BPF_CORE_READ(sk, __sk_common.skc_family)))
		return NULL;
	return sk;
}

/* Keep the sock for sys_exit: the syscall holds the file, so sk stays valid. */
static __always_inline int remember_call(struct sock *sk)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct sock_call call = { .sk = sk };

	bpf_map_update_elem(&sock_calls, &tid, &call, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_bind")
int bind_enter(struct trace_event_raw_sys_enter *ctx)
{
	struct sock *sk = inet_sock_of_call(ctx);

	if (!sk || !port_protocol(sock_protocol(sk)))
		return 0;
	return remember_call(sk);
}

SEC("tracepoint/syscalls/sys_exit_bind")
int bind_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct sock_call *call = bpf_map_lookup_elem(&sock_calls, &tid);
	struct bind_event *e;
	struct sock *sk;

	if (!call)
		return 0;
	sk = call->sk;
	bpf_map_delete_elem(&sock_calls, &tid);
	if (ctx->ret != 0)
		return 0;
	e = start_bind(LISTEN_ORIGIN_SYSCALL);
	if (!e)
		return 0;
	/* after the bind: a port 0 request now holds the port it was given */
	read_sockaddrs(sk, &e->addrs);
	send_bind(e);
	return 0;
}

/*
 * cgroup hooks run in the binder's context, before the kernel checks the
 * address: the record holds what was asked for.  `family` is a constant
 * at each call site, so the other family's context fields (which the
 * verifier forbids per attach type) are compiled out.
 */
static __always_inline void bind_requested(struct bpf_sock_addr *ctx, __u16 family)
{
	struct bind_event *e;
	__u32 protocol = ctx->protocol;

	if (pid_filtered() || !port_protocol(protocol))
		return;
	e = start_bind(LISTEN_ORIGIN_CGROUP);
	if (!e)
		return;
	__builtin_memset(&e->addrs, 0, sizeof(e->addrs));
	e->addrs.family = family;
	e->addrs.protocol = protocol;
	e->addrs.lport = bpf_ntohs(ctx->user_port);
	if (family == VIGIL_AF_INET) {
		__u32 ip4 = ctx->user_ip4;	/* network order, as the bytes go */

		__builtin_memcpy(e->addrs.laddr, &ip4, 4);
	} else {
		__u32 ip6[4];

		/* the context allows only 4-byte loads of user_ip6 */
		ip6[0] = ctx->user_ip6[0];
		ip6[1] = ctx->user_ip6[1];
		ip6[2] = ctx->user_ip6[2];
		ip6[3] = ctx->user_ip6[3];
		__builtin_memcpy(e->addrs.laddr, ip6, 16);
	}
	send_bind(e);
}

SEC("cgroup/bind4")
int bind4(struct bpf_sock_addr *ctx)
{
	bind_requested(ctx, VIGIL_AF_INET);
	return 1;	/* allow: this is a sensor, not a policy */
}

SEC("cgroup/bind6")
int bind6(struct bpf_sock_addr *ctx)
{
	bind_requested(ctx, VIGIL_AF_INET6);
	return 1;
}

/* -- listen ---------------------------------------------------------------- */

static __always_inline void send_listen(struct sock *sk, enum listen_origin origin)
{
	__u32 zero = 0;
	struct listen_event *e = bpf_map_lookup_elem(&listen_scratch, &zero);
	__u32 n;

	if (!e)
		return;
	fill_header(&e->hdr, VIGIL_EV_LISTEN);
	e->origin = origin;
	read_sockaddrs(sk, &e->addrs);
	/*
	 * Set by listen() before the state change, capped at somaxconn.  Its
	 * width has changed over time (u16, now u32): the probed read sizes
	 * it from the running kernel's BTF.
	 */
	e->backlog = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_max_ack_backlog);
	if (!e->addrs.lport) {
		/* an unbound socket seen before the kernel picked its port */
		e->hdr.flags |= VIGIL_F_PARTIAL;
		stat_inc(VIGIL_EV_LISTEN, VIGIL_STAT_PARTIAL);
	}
	n = fill_exe(e->exe, &e->hdr);
	output_event(&e->hdr, offsetof(struct listen_event, exe) + n);
}

SEC("tracepoint/syscalls/sys_enter_listen")
int listen_enter(struct trace_event_raw_sys_enter *ctx)
{
	struct sock *sk = inet_sock_of_call(ctx);

	/* already listening: this call only changes the backlog */
	if (!sk || BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_LISTEN)
		return 0;
	return remember_call(sk);
}

SEC("tracepoint/syscalls/sys_exit_listen")
int listen_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct sock_call *call = bpf_map_lookup_elem(&sock_calls, &tid);
	struct sock *sk;

	if (!call)
		return 0;
	sk = call->sk;
	bpf_map_delete_elem(&sock_calls, &tid);
	if (ctx->ret == 0)
		send_listen(sk, LISTEN_ORIGIN_SYSCALL);	/* port chosen by now */
	return 0;
}

/*
 * Any socket entering TCP_LISTEN.  Inside listen(2) (the thread has a
 * sock_calls entry) sys_exit_listen reports it with its final port;
 * elsewhere this is the only chance.
 */
static __always_inline int listen_state(struct sock *sk, int newstate)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (newstate != TCP_LISTEN || pid_filtered())
		return 0;
	if (bpf_map_lookup_elem(&sock_calls, &tid))
		return 0;
	if (!inet_family(BPF_CORE_READ(sk, __sk_common.skc_family)))
		return 0;
	send_listen(sk, LISTEN_ORIGIN_STATE);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(listen_state_btf, const struct sock *sk, const int oldstate, const int newstate)
{
	return listen_state((struct sock *)sk, newstate);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(listen_state_raw, const struct sock *sk, const int oldstate, const int newstate)
{
	return listen_state((struct sock *)sk, newstate);
}
