// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Exec sensor: every execve/execveat, successful or failed.
 *
 *   sys_enter_execve{,at}   copy filename and argv (user memory that the
 *                           exec is about to destroy) into an in-flight slot
 *   sched_process_exec      success: the kernel's filename, the absolute
 *                           path of the executable, new comm and
 *                           credentials; emit and free the slot
 *   sys_exit_execve{,at}    a slot still here means the exec failed: emit
 *                           it with the -errno
 *
 * All stable tracepoints.  A failed exec is never dropped: if the slot
 * could not be made, sys_exit still emits what it knows (PARTIAL).
 */
#include "common.bpf.h"
#include "core_fixes.bpf.h"
#include "path.bpf.h"
#include "exec.h"

VIGIL_RECORD(exec_event);

/* Filter set by user space before load; (u32)-1 = every uid. */
const volatile __u32 targ_uid = (__u32)-1;

/*
 * In-flight slot.  `slack` lets the verifier see that a string read at any
 * offset below EXEC_ARGS_SIZE stays inside the value; it is never filled.
 */
struct exec_slot {
	struct exec_event ev;
	char slack[EXEC_ARGS_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);		/* tid */
	__type(value, struct exec_event);	/* no slack: ~9 KiB, not 17 */
} inflight SEC(".maps");

/* Zeroed template: hash values cannot be built on the 512-byte stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_slot);
} scratch SEC(".maps");

struct argv_walk {
	struct exec_event *ev;
	const char *const *argv;
};

static long read_one_arg(__u32 i, struct argv_walk *w)
{
	struct exec_event *ev = w->ev;
	const char *arg = NULL;
	__u32 off = ev->args_size;
	long n;

	if (bpf_probe_read_user(&arg, sizeof(arg), &w->argv[i]) || !arg)
		return 1;	/* end of argv */
	if (off >= EXEC_ARGS_SIZE) {
		ev->hdr.flags |= VIGIL_F_TRUNCATED;
		return 1;
	}
	off &= EXEC_ARGS_SIZE - 1;
	n = bpf_probe_read_user_str(&ev->args[off], EXEC_ARGS_SIZE - off, arg);
	if (n <= 0)
		return 1;
	ev->args_size = off + n;
	ev->argc++;
	/* a string that filled the rest was cut: mark it */
	if (off + n >= EXEC_ARGS_SIZE)
		ev->hdr.flags |= VIGIL_F_TRUNCATED;
	return 0;
}

/*
 * Per-exec fields, as the caller had them: every path (enter, the partial
 * success path, the partial failure path) starts from here so no field
 * keeps a value from the previous exec on this CPU.
 */
static __always_inline void reset_exec(struct exec_event *ev, enum exec_syscall nr)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	ev->ret = 0;
	ev->argc = 0;
	ev->args_size = 0;
	ev->syscall = nr;
	ev->auid = task_loginuid(task);
	ev->euid = BPF_CORE_READ(task, cred, euid.val);
	ev->egid = BPF_CORE_READ(task, cred, egid.val);
	ev->__pad = 0;
	ev->filename[0] = 0;
	ev->exe[0] = 0;		/* known only once an exec succeeds */
}

/* The path as the caller passed it; a cut one is flagged. */
static __always_inline void read_filename(struct exec_event *ev, const char *filename)
{
	if (bpf_probe_read_user_str(ev->filename, sizeof(ev->filename), filename) ==
	    sizeof(ev->filename))
		ev->hdr.flags |= VIGIL_F_TRUNCATED;
}

static __always_inline bool uid_filtered(void)
{
	return targ_uid != (__u32)-1 && (__u32)bpf_get_current_uid_gid() != targ_uid;
}

/* A fresh record in this CPU's scratch slot, header and fields reset. */
static __always_inline struct exec_slot *start_record(enum exec_syscall nr)
{
	__u32 zero = 0;
	struct exec_slot *slot = bpf_map_lookup_elem(&scratch, &zero);

	if (!slot)
		return NULL;
	fill_header(&slot->ev.hdr, VIGIL_EV_EXEC);
	reset_exec(&slot->ev, nr);
	return slot;
}

static __always_inline int exec_enter(const char *filename,
				      const char *const *argv, enum exec_syscall nr)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct exec_slot *slot;
	struct exec_event *ev;
	struct argv_walk walk;
	const char *arg = NULL;

	if (uid_filtered())
		return 0;
	slot = start_record(nr);
	if (!slot)
		return 0;
	ev = &slot->ev;
	read_filename(ev, filename);

	walk.ev = ev;
	walk.argv = argv;
	bpf_loop(EXEC_ARGS_MAX, read_one_arg, &walk, 0);
	/* more entries than we read? */
	if (!(ev->hdr.flags & VIGIL_F_TRUNCATED) &&
	    !bpf_probe_read_user(&arg, sizeof(arg), &argv[EXEC_ARGS_MAX & 0xffff]) &&
	    ev->argc == EXEC_ARGS_MAX && arg)
		ev->hdr.flags |= VIGIL_F_TRUNCATED;

	/* on failure, sys_exit or sched_process_exec emits (and counts) a PARTIAL */
	bpf_map_update_elem(&inflight, &tid, ev, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int handle_execve_enter(struct trace_event_raw_sys_enter *ctx)
{
	return exec_enter((const char *)ctx->args[0],
			  (const char *const *)ctx->args[1], EXEC_SYSCALL_EXECVE);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int handle_execveat_enter(struct trace_event_raw_sys_enter *ctx)
{
	return exec_enter((const char *)ctx->args[1],
			  (const char *const *)ctx->args[2], EXEC_SYSCALL_EXECVEAT);
}

static __always_inline __u64 event_size(const struct exec_event *ev)
{
	__u32 used = ev->args_size;

	if (used > EXEC_ARGS_SIZE)
		used = EXEC_ARGS_SIZE;
	return offsetof(struct exec_event, args) + used;
}

/* Success.  Runs in the new image, before sys_exit. */
SEC("tracepoint/sched/sched_process_exec")
int handle_sched_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	__u32 old_tid = ctx->old_pid;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct exec_slot *slot;
	struct exec_event *ev;
	__u32 loc = ctx->__data_loc_filename & 0xffff;
	__u32 truncated;
	int partial = 0;

	/* A non-leader thread that execs takes over the leader's tid. */
	ev = bpf_map_lookup_elem(&inflight, &old_tid);
	if (!ev) {
		if (uid_filtered())
			return 0;
		slot = start_record(EXEC_SYSCALL_UNKNOWN);
		if (!slot)
			return 0;
		ev = &slot->ev;
		partial = 1;
	}
	/* argv may have been cut at enter: fill_header clears the flags. */
	truncated = partial ? 0 : ev->hdr.flags & VIGIL_F_TRUNCATED;
	/* New comm and credentials; the filename as the kernel resolved it. */
	fill_header(&ev->hdr, VIGIL_EV_EXEC);
	ev->hdr.flags |= truncated;
	if (partial) {
		ev->hdr.flags |= VIGIL_F_PARTIAL;
		stat_inc(VIGIL_EV_EXEC, VIGIL_STAT_PARTIAL);
	}
	ev->ret = 0;
	ev->euid = BPF_CORE_READ(task, cred, euid.val);
	ev->egid = BPF_CORE_READ(task, cred, egid.val);
	bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename),
				  (void *)ctx + loc);
	/*
	 * The file actually mapped, resolved from the kernel's own path
	 * (mm->exe_file was set by begin_new_exec, before this tracepoint):
	 * unlike filename it cannot be relative or name a symlink.
	 */
	if (read_task_exe(task, ev->exe, sizeof(ev->exe), &ev->hdr.flags) < 0 &&
	    !partial) {
		ev->hdr.flags |= VIGIL_F_PARTIAL;
		stat_inc(VIGIL_EV_EXEC, VIGIL_STAT_PARTIAL);
	}
	/* the new image is the process table's: it may use the whole ring */
	output_event_class(&ev->hdr, event_size(ev), VIGIL_RING_LIFECYCLE);
	if (!partial)
		bpf_map_delete_elem(&inflight, &old_tid);
	return 0;
}

/*
 * A slot left at exit belongs to a failed exec.  It changes no process, and
 * any user can fail execs by the hundred thousand per second (execve of a
 * missing file, ~1 KiB of record each): it is sent in the bulk share, so
 * such a storm can crowd out neither the successful execs, forks and exits
 * the process table is built from nor the other security kinds.
 */
static __always_inline int exec_exit(long ret, enum exec_syscall nr)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct exec_slot *slot;
	struct exec_event *ev;

	ev = bpf_map_lookup_elem(&inflight, &tid);
	if (ev) {
		ev->ret = ret;
		output_event_class(&ev->hdr, event_size(ev), VIGIL_RING_BULK);
		bpf_map_delete_elem(&inflight, &tid);
		return 0;
	}
	if (ret == 0)
		return 0;	/* success, already sent by sched_process_exec */
	/* Failed, and enter could not keep its slot: send what we know. */
	if (uid_filtered())
		return 0;
	slot = start_record(nr);
	if (!slot)
		return 0;
	ev = &slot->ev;
	ev->hdr.flags |= VIGIL_F_PARTIAL;
	ev->ret = ret;
	stat_inc(VIGIL_EV_EXEC, VIGIL_STAT_PARTIAL);
	output_event_class(&ev->hdr, event_size(ev), VIGIL_RING_BULK);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_execve")
int handle_execve_exit(struct trace_event_raw_sys_exit *ctx)
{
	return exec_exit(ctx->ret, EXEC_SYSCALL_EXECVE);
}

SEC("tracepoint/syscalls/sys_exit_execveat")
int handle_execveat_exit(struct trace_event_raw_sys_exit *ctx)
{
	return exec_exit(ctx->ret, EXEC_SYSCALL_EXECVEAT);
}
