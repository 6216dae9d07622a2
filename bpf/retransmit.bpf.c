// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Retransmit sensor: TCP retransmits, from the tcp:tcp_retransmit_skb
 * tracepoint (stable; no per-packet hook besides this one, whose rate is
 * that of losses, not of traffic).
 *
 * Two modes, chosen before load by `count_only`:
 *   0  one ring record per retransmit (vigil tcpretrans, vigil monitor)
 *   1  no record: a count per flow in `retrans_counts`, which user space
 *      reads and clears every interval (vigil tcpretrans -c)
 */
#include "common.bpf.h"
#include "core_fixes.bpf.h"
#include "net.bpf.h"
#include "retransmit.h"

VIGIL_RECORD(retransmit_event);
VIGIL_RECORD(retransmit_flow);

const volatile __u32 count_only = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct retransmit_flow);
	__type(value, __u64);			/* retransmits since last read */
} retrans_counts SEC(".maps");

/*
 * --- Kernel difference (belongs in core_fixes.bpf.h; that file is shared
 * and was not open for edits when this was written) -------------------------
 * tcp_retransmit_skb used the tcp_event_sk_skb event class, whose context
 * struct is trace_event_raw_tcp_event_sk_skb, until 6.17 (commit
 * ad892e912b84 "tcp: trace retransmit failures in tcp_retransmit_skb" gave
 * it its own struct, trace_event_raw_tcp_retransmit_skb, with `err`).  The
 * old struct's `family` came in 5.x; before it, the sock says.  One reader
 * for all: CO-RE picks the branch of the running kernel's type at load.
 */
struct trace_event_raw_tcp_event_sk_skb___old {
	struct trace_entry ent;
	const void *skbaddr;
	const void *skaddr;
	int state;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
} __attribute__((preserve_access_index));

#define TP_READ_FLOW(ctx, a)                                                   \
	do {                                                                   \
		(a)->lport = (ctx)->sport;                                     \
		(a)->rport = (ctx)->dport;                                     \
		if ((a)->family == VIGIL_AF_INET) {                            \
			bpf_probe_read_kernel((a)->laddr, 4, (ctx)->saddr);    \
			bpf_probe_read_kernel((a)->raddr, 4, (ctx)->daddr);    \
		} else {                                                       \
			bpf_probe_read_kernel((a)->laddr, 16, (ctx)->saddr_v6); \
			bpf_probe_read_kernel((a)->raddr, 16, (ctx)->daddr_v6); \
		}                                                              \
	} while (0)

/* The flow, TCP state and (6.17+) send result of one retransmit. */
static __always_inline void tcp_retransmit_tp_read(void *raw, struct vigil_sockaddrs *a,
						   __u32 *state, __s32 *err)
{
	__builtin_memset(a, 0, sizeof(*a));
	a->protocol = IPPROTO_TCP;
	if (bpf_core_type_exists(struct trace_event_raw_tcp_retransmit_skb)) {
		struct trace_event_raw_tcp_retransmit_skb *ctx = raw;

		a->family = ctx->family;
		*state = ctx->state;
		*err = ctx->err;
		TP_READ_FLOW(ctx, a);
	} else {
		struct trace_event_raw_tcp_event_sk_skb___old *ctx = raw;

		if (bpf_core_field_exists(ctx->family))
			a->family = ctx->family;
		else
			a->family = BPF_CORE_READ((struct sock *)ctx->skaddr,
						  __sk_common.skc_family);
		*state = ctx->state;
		*err = 0;
		TP_READ_FLOW(ctx, a);
	}
}
/* --- end of kernel difference ----------------------------------------------- */

static __always_inline void count_flow(const struct retransmit_flow *flow)
{
	__u64 one = 1;
	__u64 *n = bpf_map_lookup_elem(&retrans_counts, flow);

	if (n) {
		__sync_fetch_and_add(n, 1);	/* several CPUs may retransmit one flow */
		return;
	}
	if (!bpf_map_update_elem(&retrans_counts, flow, &one, BPF_NOEXIST))
		return;
	/* another CPU created it meanwhile, or the map is full */
	n = bpf_map_lookup_elem(&retrans_counts, flow);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		stat_inc(VIGIL_EV_RETRANSMIT, VIGIL_STAT_LOST);
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int handle_retransmit(void *ctx)
{
	struct retransmit_flow flow;
	struct retransmit_event *e;
	__u32 state;
	__s32 err;

	tcp_retransmit_tp_read(ctx, &flow.addrs, &state, &err);
	if (count_only) {
		count_flow(&flow);
		return 0;
	}
	e = reserve_event_class(VIGIL_EV_RETRANSMIT, sizeof(*e), VIGIL_RING_BULK);
	if (!e)
		return 0;
	/* the task on this CPU, usually not the socket's owner (timers, softirq) */
	fill_header(&e->hdr, VIGIL_EV_RETRANSMIT);
	e->addrs = flow.addrs;
	e->state = state;
	e->err = err;
	submit_event(&e->hdr, sizeof(*e));
	return 0;
}
