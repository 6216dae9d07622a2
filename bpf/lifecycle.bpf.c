// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Process lifecycle: fork (new processes, not threads) and exit (the last
 * thread of a process).  These keep user space's process table current.
 *
 * Fork needs the child task to tell a process from a thread, which the
 * classic sched_process_fork tracepoint does not give (only tids): use the
 * same tracepoint through tp_btf (typed pointers), or raw_tp where BTF
 * tracepoints are not allowed.  The loader keeps the first that loads here.
 */
#include "common.bpf.h"
#include "core_fixes.bpf.h"
#include <bpf/bpf_tracing.h>
#include "lifecycle.h"

VIGIL_RECORD(fork_event);
VIGIL_RECORD(exit_event);

static __always_inline int emit_fork(struct task_struct *child)
{
	struct fork_event *e;
	__u32 pid = BPF_CORE_READ(child, tgid);

	if (pid != BPF_CORE_READ(child, pid))
		return 0;	/* a thread */
	e = reserve_event_class(VIGIL_EV_FORK, sizeof(*e), VIGIL_RING_LIFECYCLE);
	if (!e)
		return 0;
	fill_header(&e->hdr, VIGIL_EV_FORK);
	e->child_pid = pid;
	e->__pad = 0;
	e->child_start_time = task_start_boottime(child);
	submit_event(&e->hdr, sizeof(*e));
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(fork_btf, struct task_struct *parent, struct task_struct *child)
{
	return emit_fork(child);
}

SEC("raw_tp/sched_process_fork")
int BPF_PROG(fork_raw, struct task_struct *parent, struct task_struct *child)
{
	return emit_fork(child);
}

/*
 * Before 6.16 the last thread is guessed from signal->live == 0, which two
 * threads exiting at once can both see (each decrements, then each reaches
 * the tracepoint): the first to insert the process here reports it.  The
 * key names one process for good (its signal_struct, tgid and start time:
 * a later process reusing the memory and the pid has another start); LRU
 * evicts old claims, which are only needed for the microseconds between
 * the two threads' tracepoints.
 */
struct exit_claim {
	__u64 signal;
	__u64 start_ns;
	__u32 tgid;
	__u32 __pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct exit_claim);
	__type(value, __u8);
} exit_claims SEC(".maps");

static __always_inline bool first_to_claim_exit(struct task_struct *task)
{
	struct exit_claim key = {
		.signal = (__u64)BPF_CORE_READ(task, signal),
		.start_ns = task_start_boottime(BPF_CORE_READ(task, group_leader)),
		.tgid = BPF_CORE_READ(task, tgid),
	};
	__u8 one = 1;

	return bpf_map_update_elem(&exit_claims, &key, &one, BPF_NOEXIST) == 0;
}

SEC("tracepoint/sched/sched_process_exit")
int handle_exit(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct exit_event *e;
	__u32 code;

	if (!exit_is_group_dead(ctx, task))
		return 0;	/* a thread, not the process */
	if (!exit_group_dead_exact(ctx) && !first_to_claim_exit(task))
		return 0;	/* another thread of it already reported the exit */
	e = reserve_event_class(VIGIL_EV_EXIT, sizeof(*e), VIGIL_RING_LIFECYCLE);
	if (!e)
		return 0;
	fill_header(&e->hdr, VIGIL_EV_EXIT);
	/* group exit (exit_group, fatal signal) wins over the thread's own */
	if (BPF_CORE_READ(task, signal, flags) & 0x4 /* SIGNAL_GROUP_EXIT */)
		code = BPF_CORE_READ(task, signal, group_exit_code);
	else
		code = BPF_CORE_READ(task, exit_code);
	e->exit_code = (code >> 8) & 0xff;
	e->signal = code & 0x7f;
	/* from the process's start: the leader's, whichever thread exits last */
	e->duration_ns = e->hdr.ts_ns - task_start_boottime(BPF_CORE_READ(task, group_leader));
	submit_event(&e->hdr, sizeof(*e));
	return 0;
}
