/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * What syscall sensors share: the syscall a task is in, a file behind a
 * descriptor, and the in-flight slot that carries a record from
 * sys_enter_* (arguments) to sys_exit_* (result, strings read once the
 * kernel has faulted the caller's pages in).
 */
#ifndef __VIGIL_SYSCALL_BPF_H
#define __VIGIL_SYSCALL_BPF_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "syscalls.h"	/* enum vigil_syscall: generated from <asm/unistd.h> */

#define VIGIL_PF_KTHREAD 0x00200000	/* include/linux/sched.h */

/* The syscall number saved in a task's user registers (syscall_get_nr()). */
static __always_inline long regs_syscall_nr(struct pt_regs *regs)
{
#if defined(__TARGET_ARCH_x86)
	return BPF_CORE_READ(regs, orig_ax);
#elif defined(__TARGET_ARCH_arm64)
	return BPF_CORE_READ(regs, syscallno);
#else
	return -1;
#endif
}

/*
 * The syscall the current task is in: the number its saved user registers
 * hold, as the kernel's syscall_get_nr() reads it (orig_ax on x86,
 * syscallno on arm64).  -1 for a kernel thread.  Outside a syscall (a
 * page fault) the saved registers name the last syscall entered, or an
 * exception code on x86: only meaningful while the task is in a syscall.
 */
static __always_inline long current_syscall_nr(void)
{
	/* a BTF pointer: bpf_task_pt_regs() takes no plain scalar (5.11+) */
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs;

	if (BPF_CORE_READ(task, flags) & VIGIL_PF_KTHREAD)
		return -1;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return -1;
	return regs_syscall_nr(regs);
}

/*
 * The struct file behind descriptor `fd` of the current task, or NULL.
 * Every open's return comes here: the walk to the fd array is typed
 * loads from the task (BTF pointers, 5.11+), not a helper call each; only
 * the array slot, a pointer to a pointer, is read with one.
 */
static __always_inline struct file *current_fd_file(long fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct files_struct *files = task->files;
	struct fdtable *fdt;
	struct file **fds;
	struct file *f = NULL;

	if (!files || fd < 0)
		return NULL;
	fdt = files->fdt;
	if (!fdt || fd >= fdt->max_fds)
		return NULL;
	fds = fdt->fd;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]))
		return NULL;
	return f;
}

/*
 * A record in flight from sys_enter to sys_exit, one slot per thread,
 * with the call's arguments (sys_exit tracepoints carry none; user
 * pointers are read at exit).  LRU: a thread killed inside the syscall
 * never reaches sys_exit, and its slot is evicted rather than filling the
 * map.  `<name>_zero` is an all-zero slot to start from (records do not
 * fit the 512-byte stack).
 */
#define VIGIL_INFLIGHT(name, record, entries)				\
	struct name##_slot {						\
		struct record ev;					\
		unsigned long args[6];					\
	};								\
	struct {							\
		__uint(type, BPF_MAP_TYPE_LRU_HASH);			\
		__uint(max_entries, entries);				\
		__type(key, __u32);					\
		__type(value, struct name##_slot);			\
	} name SEC(".maps");						\
	struct {							\
		__uint(type, BPF_MAP_TYPE_ARRAY);			\
		__uint(max_entries, 1);					\
		__type(key, __u32);					\
		__type(value, struct name##_slot);			\
	} name##_zero SEC(".maps")

/*
 * One load per argument at a constant offset (the verifier refuses a moved
 * ctx pointer), and only the `n` the syscall has: a sys_enter_* record is
 * only as long as its arguments, and attaching a program that reads past
 * it fails (EACCES).  `ctx`: anything with an `args[]` member.
 */
#define keep_args(dst, ctx, n)						\
	do {								\
		if ((n) > 0)						\
			(dst)[0] = (ctx)->args[0];			\
		if ((n) > 1)						\
			(dst)[1] = (ctx)->args[1];			\
		if ((n) > 2)						\
			(dst)[2] = (ctx)->args[2];			\
		if ((n) > 3)						\
			(dst)[3] = (ctx)->args[3];			\
		if ((n) > 4)						\
			(dst)[4] = (ctx)->args[4];			\
		if ((n) > 5)						\
			(dst)[5] = (ctx)->args[5];			\
	} while (0)

/*
 * A fresh slot for this thread, the `nargs` arguments of `ctx` (a
 * sys_enter record) kept and the header filled in (the caller, at entry); NULL,
 * counted as lost, when it cannot be made.
 */
#define inflight_start(map, kind, ctx, nargs)					\
	({								\
		__u32 __tid = (__u32)bpf_get_current_pid_tgid(), __z = 0;	\
		struct map##_slot *__v = bpf_map_lookup_elem(&map##_zero, &__z);	\
		struct map##_slot *__s = NULL;				\
		if (__v && !bpf_map_update_elem(&map, &__tid, __v, BPF_ANY))	\
			__s = bpf_map_lookup_elem(&map, &__tid);	\
		if (__s) {						\
			fill_header(&__s->ev.hdr, kind);		\
			keep_args(__s->args, (ctx), (nargs));			\
		} else {						\
			stat_inc(kind, VIGIL_STAT_LOST);		\
		}							\
		__s;							\
	})

/* This thread's slot, or NULL (not started, filtered, or evicted). */
#define inflight_get(map)						\
	({								\
		__u32 __tid = (__u32)bpf_get_current_pid_tgid();	\
		(struct map##_slot *)bpf_map_lookup_elem(&map, &__tid);	\
	})

#define inflight_end(map)						\
	({								\
		__u32 __tid = (__u32)bpf_get_current_pid_tgid();	\
		bpf_map_delete_elem(&map, &__tid);			\
	})

/* A string the caller passed, read at exit; a failed read marks PARTIAL. */
static __always_inline bool read_user_string(char *dst, __u32 size, const void *src,
					     __u32 *flags)
{
	long n;

	dst[0] = 0;
	if (!src)
		return true;	/* NULL passed: nothing to read */
	n = bpf_probe_read_user_str(dst, size, src);
	if (n < 0) {
		*flags |= VIGIL_F_PARTIAL;
		return false;
	}
	if (n == size)
		*flags |= VIGIL_F_TRUNCATED;
	return true;
}

/* Send a finished slot; a PARTIAL one is counted as such. */
static __always_inline void emit_record(struct vigil_header *hdr, __u64 size)
{
	if (hdr->flags & VIGIL_F_PARTIAL)
		stat_inc(hdr->kind, VIGIL_STAT_PARTIAL);
	output_event(hdr, size);
}

#endif /* __VIGIL_SYSCALL_BPF_H */
