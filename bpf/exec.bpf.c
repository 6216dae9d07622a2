// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Exec sensor: every execve/execveat, successful or failed.
 *
 *   sys_enter_execve{,at}   note the call (argv and filename pointers, the
 *                           caller's mm, the time) in a small in-flight
 *                           slot; nothing is copied yet
 *   sched_process_exec      success: argv as the kernel copied it into the
 *                           new image, the kernel's filename, the absolute
 *                           path and kind of the executable, new comm and
 *                           credentials; emit and free the slot
 *   sys_exit_execve{,at}    a slot still here means the exec failed: read
 *                           the caller's filename and argv now, emit them
 *                           flagged CALLER_ARGS with the -errno
 *
 * Why not copy argv at sys_enter (as bcc's execsnoop does): that memory
 * belongs to the caller, who can rewrite it from another thread after the
 * probe read it and before the kernel copies it (the "Phantom Attack"),
 * and a BPF probe cannot fault in a page the caller never touched (argv
 * in an untouched file mapping reads as nothing).  At sched_process_exec
 * the kernel has copied argv to the new stack (copy_strings faulted those
 * pages in), the old threads are gone (de_thread), and no user code of
 * the new image has run: mm->arg_start..arg_end is exactly what the
 * program gets as its argv and /proc/<pid>/cmdline.
 *
 * A failed exec has no new image: what it tried is the caller's memory,
 * read at sys_exit rather than at entry because (a) on kernels that copy
 * the strings before opening the file (before 6.8) the failed exec has
 * faulted them in by then, so hidden argv is readable, (b) a successful
 * exec, the common case, then pays for no 8 KiB copy it would throw away.
 * Either way it is only "what the caller passed", and says so.
 *
 *   lsm/bprm_check_security  where BPF-LSM works: the file the exec opened,
 *                           resolved by the kernel at the first check (the
 *                           script of a "#!" script), kept per thread until
 *                           the outcome's record takes it
 *
 * Stable tracepoints, and the one LSM hook where the kernel has it.
 * Nothing unreadable passes for complete: a
 * missing piece sets PARTIAL (counted), a cut one TRUNCATED.
 */
#include "common.bpf.h"
#include "core_fixes.bpf.h"
#include "path.bpf.h"
#include <bpf/bpf_tracing.h>
#include "exec.h"

VIGIL_RECORD(exec_event);
enum exec_exe_kind *__vigil_enum_exe_kind __attribute__((unused));

/* Filter set by user space before load; (u32)-1 = every uid. */
const volatile __u32 targ_uid = (__u32)-1;

/*
 * Record being built.  `slack` lets the verifier see that a string read
 * at any offset below EXEC_ARGS_SIZE stays inside the value (and gives
 * the NUL counter a word of padding past the end); it is never sent.
 */
struct exec_slot {
	struct exec_event ev;
	char slack[EXEC_ARGS_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_slot);
} scratch SEC(".maps");

/* An exec between sys_enter and its outcome. */
struct exec_call {
	const char *filename;		/* caller's pointers, meaningful in `mm` only */
	const char *const *argv;
	void *mm;			/* the caller's mm at entry */
	__u64 ts_ns;			/* a failed exec is stamped at entry */
	enum exec_syscall syscall;
	__u32 checks;			/* bprm_check_security calls so far */
};

/*
 * Preallocated (an update is a free-list pop, not a kmalloc per exec) and
 * LRU: an entry whose sys_exit never came (the sensor attached mid-exec)
 * is recycled, never left to fill the table.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);		/* tid */
	__type(value, struct exec_call);
} inflight SEC(".maps");

/* The file an exec opened (bprm_check_security), until its outcome. */
struct exec_file {
	__u32 flags;			/* VIGIL_F_TRUNCATED / PARTIAL of the walk */
	char path[EXEC_PATH_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);		/* tid */
	__type(value, struct exec_file);
} exec_files SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_file);
} exec_file_scratch SEC(".maps");

/* Move the file thread `tid`'s exec opened into the record, if one was seen. */
static __always_inline void take_exec_file(struct exec_event *ev, __u32 tid)
{
	struct exec_file *f = bpf_map_lookup_elem(&exec_files, &tid);

	if (!f)
		return;
	if (bpf_probe_read_kernel_str(ev->file, sizeof(ev->file), f->path) < 0)
		ev->file[0] = 0;
	ev->hdr.flags |= f->flags;
	bpf_map_delete_elem(&exec_files, &tid);
}

/*
 * Per-exec fields: every path starts from here so no field keeps a value
 * from the previous exec on this CPU.
 */
static __always_inline void reset_exec(struct exec_event *ev, enum exec_syscall nr)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	ev->ret = 0;
	ev->argc = 0;
	ev->args_size = 0;
	ev->syscall = nr;
	ev->exe_kind = EXEC_EXE_NONE;
	ev->auid = task_loginuid(task);
	ev->euid = BPF_CORE_READ(task, cred, euid.val);
	ev->egid = BPF_CORE_READ(task, cred, egid.val);
	ev->filename[0] = 0;
	ev->exe[0] = 0;		/* known only once an exec succeeds */
	ev->file[0] = 0;
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

static __always_inline __u64 event_size(const struct exec_event *ev)
{
	__u32 used = ev->args_size;

	if (used > EXEC_ARGS_SIZE)
		used = EXEC_ARGS_SIZE;
	return offsetof(struct exec_event, args) + used;
}

/*
 * `cls`: a successful exec changes the process table and may use the whole
 * ring (VIGIL_RING_LIFECYCLE).  A failed one changes no process, and any
 * user can fail execs by the hundred thousand per second (execve of a
 * missing file, ~1 KiB of record each): it goes in the bulk share, so such
 * a storm crowds out neither the lifecycle nor the other security kinds.
 */
static __always_inline void send(struct exec_event *ev, enum vigil_ring_class cls)
{
	if (ev->hdr.flags & VIGIL_F_PARTIAL)
		stat_inc(VIGIL_EV_EXEC, VIGIL_STAT_PARTIAL);
	output_event_class(&ev->hdr, event_size(ev), cls);
}

/* ---- sys_enter: remember the call ------------------------------------- */

static __always_inline int exec_enter(const char *filename,
				      const char *const *argv, enum exec_syscall nr)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct exec_call call = {
		.filename = filename,
		.argv = argv,
		.mm = BPF_CORE_READ(task, mm),
		.ts_ns = bpf_ktime_get_boot_ns(),
		.syscall = nr,
	};

	if (uid_filtered())
		return 0;
	/*
	 * A full table is not silent: a success is still reported (syscall
	 * "unknown"), a failure as PARTIAL by sys_exit.
	 */
	bpf_map_update_elem(&inflight, &tid, &call, BPF_ANY);
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

/* ---- sched_process_exec: what the kernel used ------------------------- */

/* bpf_loop context for counting the NULs of the argv region. */
struct nul_count {
	struct exec_event *ev;
	__u32 words;		/* 8-byte words to scan */
	__u32 nuls;
};

/*
 * NUL bytes in one word, exactly (no false positives from borrows): the
 * high bit of each byte of `zero` is set iff that byte is 0; the multiply
 * sums those bits into the top byte.  Byte-order independent.
 */
static long count_word(__u32 i, struct nul_count *c)
{
	const __u64 low7 = 0x7f7f7f7f7f7f7f7fULL;
	__u64 x, zero;

	if (i >= c->words)
		return 1;
	x = *(__u64 *)&c->ev->args[(i * 8) & (EXEC_ARGS_SIZE - 1)];
	zero = ~(((x & low7) + low7) | x | low7);
	c->nuls += ((zero >> 7) * 0x0101010101010101ULL) >> 56;
	return 0;
}

/*
 * argv of the new image: mm->arg_start..arg_end is argc NUL-terminated
 * strings back to back (empty strings included), exactly what the kernel
 * copied and the program sees.  argc is the number of NULs kept.
 */
static __always_inline void read_new_argv(struct exec_event *ev,
					  struct task_struct *task)
{
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	unsigned long end = BPF_CORE_READ(mm, arg_end);
	struct nul_count c = { .ev = ev };
	__u64 len;

	if (!mm || !start || end < start) {
		ev->hdr.flags |= VIGIL_F_PARTIAL;
		return;
	}
	len = end - start;
	if (!len)
		return;		/* argc 0 (kernels before 5.18 allow it) */
	if (len > EXEC_ARGS_SIZE) {
		len = EXEC_ARGS_SIZE;
		ev->hdr.flags |= VIGIL_F_TRUNCATED;
	}
	if (bpf_probe_read_user(ev->args, len, (void *)start)) {
		ev->hdr.flags |= VIGIL_F_PARTIAL;
		return;
	}
	/* a cut region ends inside a string: end it there */
	ev->args[(len - 1) & (EXEC_ARGS_SIZE - 1)] = 0;
	ev->args_size = len;
	/* the word scan reads up to 7 bytes past len (slack at the end): non-NUL */
#pragma unroll
	for (int k = 0; k < 8; k++)
		ev->args[len + k] = 0xff;
	c.words = (len + 7) / 8;
	bpf_loop(EXEC_ARGS_SIZE / 8, count_word, &c, 0);
	ev->argc = c.nuls;
}

/*
 * What the executable is, from the kernel's objects: no name matching on
 * the path string, which a file can fake.  memfd_create() files are
 * pseudo files (alloc_file_pseudo: a d_dname operation, no parent
 * directory) named "memfd:<name>"; a regular file named like that on
 * tmpfs has no d_dname.
 */
static __always_inline enum exec_exe_kind exe_kind_of(struct file *exe)
{
	struct dentry *d = BPF_CORE_READ(exe, f_path.dentry);
	char name[6] = {};

	if (!exe || !d)
		return EXEC_EXE_NONE;
	if (BPF_CORE_READ(d, d_op, d_dname) &&
	    !bpf_probe_read_kernel(name, sizeof(name), BPF_CORE_READ(d, d_name.name)) &&
	    name[0] == 'm' && name[1] == 'e' && name[2] == 'm' && name[3] == 'f' &&
	    name[4] == 'd' && name[5] == ':')
		return EXEC_EXE_MEMFD;
	if (BPF_CORE_READ(exe, f_inode, i_nlink) == 0)
		return EXEC_EXE_DELETED;
	return EXEC_EXE_FILE;
}

/* Success.  Runs in the new image, before sys_exit. */
SEC("tracepoint/sched/sched_process_exec")
int handle_sched_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	__u32 old_tid = ctx->old_pid;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 loc = ctx->__data_loc_filename & 0xffff;
	enum exec_syscall nr = EXEC_SYSCALL_UNKNOWN;
	struct exec_call *call;
	struct exec_slot *slot;
	struct exec_event *ev;

	/* A non-leader thread that execs takes over the leader's tid. */
	call = bpf_map_lookup_elem(&inflight, &old_tid);
	if (call) {
		nr = call->syscall;
		bpf_map_delete_elem(&inflight, &old_tid);
	} else if (uid_filtered()) {
		return 0;
	}
	slot = start_record(nr);
	if (!slot)
		return 0;
	ev = &slot->ev;
	/* bprm->filename, the kernel's copy (new comm and creds in the header) */
	if (bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename),
				      (void *)ctx + loc) == sizeof(ev->filename))
		ev->hdr.flags |= VIGIL_F_TRUNCATED;
	/*
	 * The file actually mapped, resolved from the kernel's own path
	 * (mm->exe_file was set by begin_new_exec, before this tracepoint):
	 * unlike filename it cannot be relative or name a symlink.
	 */
	ev->exe_kind = exe_kind_of(BPF_CORE_READ(task, mm, exe_file));
	if (read_task_exe(task, ev->exe, sizeof(ev->exe), &ev->hdr.flags) < 0)
		ev->hdr.flags |= VIGIL_F_PARTIAL;
	read_new_argv(ev, task);
	take_exec_file(ev, old_tid);
	send(ev, VIGIL_RING_LIFECYCLE);
	return 0;
}

/*
 * -- lsm/bprm_check_security: the file the exec opened ----------------------------
 * Called once per binary-format pass (a script, then its interpreter):
 * the first is the file the caller named, resolved from the kernel's
 * struct file (no symlink, no relative path).  Observes only.
 */
SEC("lsm/bprm_check_security")
int BPF_PROG(handle_bprm_check, struct linux_binprm *bprm)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), zero = 0;
	struct exec_call *call = bpf_map_lookup_elem(&inflight, &tid);
	struct exec_file *f;
	struct file *file;

	if (!call || call->checks++)
		return 0;	/* not traced (uid filter), or the interpreter's pass */
	f = bpf_map_lookup_elem(&exec_file_scratch, &zero);
	file = BPF_CORE_READ(bprm, file);
	if (!f || !file)
		return 0;
	f->flags = 0;
	if (read_path(BPF_CORE_READ(file, f_path.mnt), BPF_CORE_READ(file, f_path.dentry),
		      f->path, sizeof(f->path), &f->flags) < 0)
		f->flags |= VIGIL_F_PARTIAL;
	bpf_map_update_elem(&exec_files, &tid, f, BPF_ANY);
	return 0;
}

/* ---- sys_exit of a failed exec: what the caller passed ----------------- */

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

	if (bpf_probe_read_user(&arg, sizeof(arg), &w->argv[i])) {
		ev->hdr.flags |= VIGIL_F_PARTIAL;	/* argv[] itself unreadable */
		return 1;
	}
	if (!arg)
		return 1;	/* end of argv */
	if (off >= EXEC_ARGS_SIZE) {
		ev->hdr.flags |= VIGIL_F_TRUNCATED;
		return 1;
	}
	off &= EXEC_ARGS_SIZE - 1;
	n = bpf_probe_read_user_str(&ev->args[off], EXEC_ARGS_SIZE - off, arg);
	if (n < 0) {
		/* not resident or a bad pointer: argv goes on, we cannot see it */
		ev->hdr.flags |= VIGIL_F_PARTIAL;
		return 1;
	}
	if (n == 0) {
		/*
		 * An empty string: kernels before strncpy_from_user_nofault
		 * counted the NUL for it (6.1 among them) return 0, not 1.
		 */
		ev->args[off] = 0;
		n = 1;
	}
	ev->args_size = off + n;
	ev->argc++;
	/* a string that filled the rest was cut: mark it */
	if (off + n >= EXEC_ARGS_SIZE)
		ev->hdr.flags |= VIGIL_F_TRUNCATED;
	return 0;
}

static __always_inline void read_caller_argv(struct exec_event *ev,
					     const struct exec_call *call)
{
	struct argv_walk walk = { .ev = ev, .argv = call->argv };
	const char *arg = NULL;
	long n;

	n = bpf_probe_read_user_str(ev->filename, sizeof(ev->filename), call->filename);
	if (n < 0) {
		ev->filename[0] = 0;
		ev->hdr.flags |= VIGIL_F_PARTIAL;
	} else if (n == sizeof(ev->filename)) {
		ev->hdr.flags |= VIGIL_F_TRUNCATED;
	}
	if (!call->argv)
		return;		/* argv NULL: the caller passed none */
	bpf_loop(EXEC_ARGS_MAX, read_one_arg, &walk, 0);
	/* more entries than we read? */
	if (!(ev->hdr.flags & (VIGIL_F_TRUNCATED | VIGIL_F_PARTIAL)) &&
	    ev->argc == EXEC_ARGS_MAX &&
	    !bpf_probe_read_user(&arg, sizeof(arg), &call->argv[EXEC_ARGS_MAX & 0xffff]) &&
	    arg)
		ev->hdr.flags |= VIGIL_F_TRUNCATED;
}

static __always_inline int exec_exit(long ret, enum exec_syscall nr)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct exec_call call = {}, *found;
	struct exec_slot *slot;
	struct exec_event *ev;

	found = bpf_map_lookup_elem(&inflight, &tid);
	if (found) {
		call = *found;
		bpf_map_delete_elem(&inflight, &tid);
	}
	if (ret == 0)
		return 0;	/* success, already sent by sched_process_exec */
	if (!found && uid_filtered())
		return 0;
	slot = start_record(found ? call.syscall : nr);
	if (!slot)
		return 0;
	ev = &slot->ev;
	ev->ret = ret;
	ev->hdr.flags |= VIGIL_F_CALLER_ARGS;
	if (!found) {
		/* enter could not keep its slot: send what we know */
		ev->hdr.flags |= VIGIL_F_PARTIAL;
	} else if (call.mm != BPF_CORE_READ(task, mm)) {
		/*
		 * Failed past the point of no return: the caller's memory is
		 * gone (the task dies with SIGSEGV), its pointers mean nothing.
		 */
		ev->hdr.ts_ns = call.ts_ns;
		ev->hdr.flags |= VIGIL_F_PARTIAL;
	} else {
		ev->hdr.ts_ns = call.ts_ns;
		read_caller_argv(ev, &call);
	}
	take_exec_file(ev, tid);
	send(ev, VIGIL_RING_BULK);
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
