// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Signals and ptrace: who signals whom (kill, tkill, tgkill,
 * pidfd_send_signal, rt_sigqueueinfo, rt_tgsigqueueinfo) and who takes control of another process (ptrace
 * attach, seize, traceme) or writes into it (poke, setregs).
 *
 *   syscalls   sys_enter_* keeps the arguments, sys_exit_* emits with the
 *              result.  The target is the pid as passed; it is a host pid
 *              (user space names the target's exe and comm) when the
 *              caller is in the host's pid namespace.  A pidfd is resolved
 *              to its process in the kernel, once the call succeeded.
 *   lsm        task_kill / ptrace_access_check, with the same syscall
 *              programs: the task the kernel acted on, whatever namespace
 *              the caller is in (target_source = kernel).  For a group
 *              kill (pid 0, -1, -pgid) the hook runs per task: the last
 *              one is kept.  Not loadable here (EPERM).
 *
 * Volume: kill(pid, 0) (a liveness probe) and ptrace pokes can come in
 * loops; with `unique` (vigil monitor) each is reported once per
 * (process image, call, target, result).  Real signals, attaches and
 * failures of another kind are always reported.
 */
#include "common.bpf.h"
#include "core_fixes.bpf.h"
#include "syscall.bpf.h"
#include <bpf/bpf_tracing.h>
#include "signal.h"

VIGIL_RECORD(kill_event);
VIGIL_RECORD(ptrace_event);
enum kill_syscall *__vigil_enum_kill_syscall __attribute__((unused));
enum target_source *__vigil_enum_target_source __attribute__((unused));
enum ptrace_request *__vigil_enum_ptrace_request __attribute__((unused));

const volatile __u32 targ_pid = 0;	/* only this sender; 0 = all */
const volatile __s32 targ_sig = -1;	/* only this signal; -1 = all */
const volatile __u8 unique = 0;		/* probes and pokes once per image/target/result */

VIGIL_INFLIGHT(kill_calls, kill_event, 4096);
VIGIL_INFLIGHT(ptrace_calls, ptrace_event, 1024);

/* What makes a probe or a poke "the same" (see capable's key). */
struct repeat_key {
	__u64 start_ns;
	__u64 exec_id;
	__u32 pid;
	__s32 target;
	__s32 ret;
	__u32 what;		/* kind << 16 | syscall or request */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct repeat_key);
	__type(value, __u8);
} signal_seen SEC(".maps");

static __always_inline bool repeated(__u32 what, __s32 target, __s32 ret)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct repeat_key key = {};

	key.start_ns = task_start_boottime(BPF_CORE_READ(task, group_leader));
	key.exec_id = BPF_CORE_READ(task, self_exec_id);
	key.pid = bpf_get_current_pid_tgid() >> 32;
	key.target = target;
	key.ret = ret;
	key.what = what;
	return seen_before(&signal_seen, &key);
}

static __always_inline bool sender_wanted(void)
{
	return !targ_pid || (bpf_get_current_pid_tgid() >> 32) == targ_pid;
}

/* The caller sees host pids: a pid it passes names the same process for us. */
static __always_inline bool caller_in_host_pidns(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(task, thread_pid, level) == 0;
}

/* -- kill ------------------------------------------------------------------------ */
static __always_inline int kill_enter(struct trace_event_raw_sys_enter *ctx, int nargs,
				      enum kill_syscall nr, __s32 target, __s32 tid, int sig)
{
	struct kill_calls_slot *s;
	struct kill_event *e;

	if (!sender_wanted() || (targ_sig >= 0 && sig != targ_sig))
		return 0;
	s = inflight_start(kill_calls, VIGIL_EV_KILL, ctx, nargs);
	if (!s)
		return 0;
	e = &s->ev;
	e->syscall = nr;
	e->sig = sig;
	e->target_arg = target;
	e->target_tid = tid;
	if (nr != KILL_SYSCALL_PIDFD_SEND_SIGNAL && target > 0 && caller_in_host_pidns()) {
		e->target_pid = target;
		e->target_source = TARGET_SOURCE_ARGUMENT;
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_kill")
int kill_enter_kill(struct trace_event_raw_sys_enter *ctx)
{
	return kill_enter(ctx, 2, KILL_SYSCALL_KILL, ctx->args[0], 0, ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_tkill")
int kill_enter_tkill(struct trace_event_raw_sys_enter *ctx)
{
	return kill_enter(ctx, 2, KILL_SYSCALL_TKILL, ctx->args[0], ctx->args[0], ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_tgkill")
int kill_enter_tgkill(struct trace_event_raw_sys_enter *ctx)
{
	return kill_enter(ctx, 3, KILL_SYSCALL_TGKILL, ctx->args[0], ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_pidfd_send_signal")
int kill_enter_pidfd(struct trace_event_raw_sys_enter *ctx)
{
	return kill_enter(ctx, 4, KILL_SYSCALL_PIDFD_SEND_SIGNAL, ctx->args[0], 0, ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_rt_sigqueueinfo")
int kill_enter_rt_sigqueueinfo(struct trace_event_raw_sys_enter *ctx)
{
	/* (pid_t tgid, int sig, siginfo_t *uinfo) */
	return kill_enter(ctx, 3, KILL_SYSCALL_RT_SIGQUEUEINFO, ctx->args[0], 0, ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_rt_tgsigqueueinfo")
int kill_enter_rt_tgsigqueueinfo(struct trace_event_raw_sys_enter *ctx)
{
	/* (pid_t tgid, pid_t tid, int sig, siginfo_t *uinfo) */
	return kill_enter(ctx, 4, KILL_SYSCALL_RT_TGSIGQUEUEINFO, ctx->args[0], ctx->args[1],
			  ctx->args[2]);
}

/*
 * The process behind a pidfd: file->private_data before pidfs (6.9),
 * the pidfs inode's i_private since.  Only called once the call
 * succeeded, so the fd was a pidfd.
 */
static __always_inline __u32 pidfd_tgid(int fd)
{
	struct file *f = current_fd_file(fd);
	struct pid *pid;

	if (!f)
		return 0;
	pid = BPF_CORE_READ(f, private_data);
	if (!pid)
		pid = BPF_CORE_READ(f, f_inode, i_private);
	if (!pid)
		return 0;
	return BPF_CORE_READ(pid, numbers[0].nr);
}

static __always_inline int kill_exit(long ret)
{
	struct kill_calls_slot *s = inflight_get(kill_calls);
	struct kill_event *e;

	if (!s)
		return 0;
	e = &s->ev;
	e->ret = ret;
	if (e->syscall == KILL_SYSCALL_PIDFD_SEND_SIGNAL && ret == 0 &&
	    e->target_source == TARGET_SOURCE_NONE) {
		e->target_pid = pidfd_tgid(e->target_arg);
		if (e->target_pid)
			e->target_source = TARGET_SOURCE_KERNEL;
	}
	if (!(unique && e->sig == 0 &&
	      repeated(VIGIL_EV_KILL << 16 | e->syscall, e->target_arg, ret)))
		emit_record(&e->hdr, sizeof(*e));
	inflight_end(kill_calls);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_kill")
int kill_exit_kill(struct trace_event_raw_sys_exit *ctx)
{
	return kill_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_tkill")
int kill_exit_tkill(struct trace_event_raw_sys_exit *ctx)
{
	return kill_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_tgkill")
int kill_exit_tgkill(struct trace_event_raw_sys_exit *ctx)
{
	return kill_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_pidfd_send_signal")
int kill_exit_pidfd(struct trace_event_raw_sys_exit *ctx)
{
	return kill_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_rt_sigqueueinfo")
int kill_exit_rt_sigqueueinfo(struct trace_event_raw_sys_exit *ctx)
{
	return kill_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_rt_tgsigqueueinfo")
int kill_exit_rt_tgsigqueueinfo(struct trace_event_raw_sys_exit *ctx)
{
	return kill_exit(ctx->ret);
}

/* -- ptrace ------------------------------------------------------------------------ */
static __always_inline bool ptrace_reported(long request)
{
	switch (request) {
	case PTRACE_REQUEST_TRACEME:
	case PTRACE_REQUEST_POKETEXT:
	case PTRACE_REQUEST_POKEDATA:
	case PTRACE_REQUEST_POKEUSER:
	case PTRACE_REQUEST_SETREGS:
	case PTRACE_REQUEST_SETFPREGS:
	case PTRACE_REQUEST_ATTACH:
	case PTRACE_REQUEST_SETREGSET:
	case PTRACE_REQUEST_SEIZE:
		return true;
	}
	return false;
}

static __always_inline bool is_poke(enum ptrace_request r)
{
	return r != PTRACE_REQUEST_TRACEME && r != PTRACE_REQUEST_ATTACH &&
	       r != PTRACE_REQUEST_SEIZE;
}

SEC("tracepoint/syscalls/sys_enter_ptrace")
int ptrace_enter(struct trace_event_raw_sys_enter *ctx)
{
	/* (long request, long pid, unsigned long addr, unsigned long data) */
	long request = ctx->args[0];
	struct ptrace_calls_slot *s;
	struct ptrace_event *e;

	if (!ptrace_reported(request) || !sender_wanted())
		return 0;
	s = inflight_start(ptrace_calls, VIGIL_EV_PTRACE, ctx, 4);
	if (!s)
		return 0;
	e = &s->ev;
	e->request = request;
	e->addr = s->args[2];
	e->data = s->args[3];
	if (request == PTRACE_REQUEST_TRACEME) {
		e->target_pid = e->hdr.ppid;	/* the parent becomes the tracer */
		e->target_source = TARGET_SOURCE_KERNEL;
	} else {
		e->target_arg = s->args[1];
		if (e->target_arg > 0 && caller_in_host_pidns()) {
			e->target_pid = e->target_arg;
			e->target_source = TARGET_SOURCE_ARGUMENT;
		}
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_ptrace")
int ptrace_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct ptrace_calls_slot *s = inflight_get(ptrace_calls);
	struct ptrace_event *e;

	if (!s)
		return 0;
	e = &s->ev;
	e->ret = ctx->ret;
	if (!(unique && is_poke(e->request) &&
	      repeated(VIGIL_EV_PTRACE << 16 | e->request, e->target_arg, e->ret)))
		emit_record(&e->hdr, sizeof(*e));
	inflight_end(ptrace_calls);
	return 0;
}

/* -- LSM: the task the kernel acted on ------------------------------------------------ */
SEC("lsm/task_kill")
int BPF_PROG(kill_lsm_task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig,
	     const struct cred *cred)
{
	struct kill_calls_slot *s = inflight_get(kill_calls);

	if (s) {
		s->ev.target_pid = BPF_CORE_READ(p, tgid);
		s->ev.target_source = TARGET_SOURCE_KERNEL;
	}
	return 0;
}

SEC("lsm/ptrace_access_check")
int BPF_PROG(ptrace_lsm_access_check, struct task_struct *child, unsigned int mode)
{
	struct ptrace_calls_slot *s = inflight_get(ptrace_calls);

	if (s) {
		s->ev.target_pid = BPF_CORE_READ(child, tgid);
		s->ev.target_source = TARGET_SOURCE_KERNEL;
	}
	return 0;
}
