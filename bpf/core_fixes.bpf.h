/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * Every kernel-version or kernel-config difference Vigil meets, one
 * accessor each.  CO-RE field-existence checks, no version numbers.
 */
#ifndef __VIGIL_CORE_FIXES_BPF_H
#define __VIGIL_CORE_FIXES_BPF_H

#include <vmlinux.h>
#include <bpf/bpf_core_read.h>

/* task->loginuid exists only with CONFIG_AUDITSYSCALL. */
static __always_inline __u32 task_loginuid(struct task_struct *task)
{
	if (bpf_core_field_exists(task->loginuid))
		return BPF_CORE_READ(task, loginuid.val);
	return (__u32)-1;
}

/*
 * task->start_boottime was real_start_time before 5.5 (commit
 * cf25e24db61c "time: Rename tsk->real_start_time to ->start_boottime").
 */
struct task_struct___pre55 {
	__u64 real_start_time;
};

static __always_inline __u64 task_start_boottime(struct task_struct *task)
{
	if (bpf_core_field_exists(task->start_boottime))
		return BPF_CORE_READ(task, start_boottime);
	return BPF_CORE_READ((struct task_struct___pre55 *)task, real_start_time);
}

/*
 * real_mount(): the struct mount around a struct vfsmount.  struct mount is
 * private to fs/ (fs/mount.h) and its layout changes between versions
 * (the list heads before `mnt` have changed type; fields are added often),
 * so the offset of its `mnt` member comes from the running kernel's BTF
 * (a CO-RE relocation), never from our vmlinux.h.
 */
static __always_inline struct mount *vfsmount_real_mount(struct vfsmount *vfsmnt)
{
	return (struct mount *)((char *)vfsmnt -
				bpf_core_field_offset(struct mount, mnt));
}

/*
 * dentry->d_name is a plain member in older kernels and, in recent 6.x, a
 * const member of an anonymous union with __d_name.  CO-RE resolves
 * d_name by name through the union, so BPF_CORE_READ(d, d_name.len) needs
 * no fallback on either side of that change.
 */

/*
 * sk->sk_protocol was an 8-bit bitfield until 5.6 (commit bf9765145b85
 * "sock: Make sk_protocol a 16-bit value"); the probed bitfield read
 * handles both layouts.
 */
static __always_inline __u16 sock_protocol(struct sock *sk)
{
	return BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
}

/*
 * Whether this sched_process_exit is the last thread of its process.
 * Since 6.16 (commit "sched: Add group_dead to sched_process_exit") the
 * tracepoint says so; before, signal->live reaching 0 is the best guess,
 * and two threads exiting at once can both see 0 there.
 */
static __always_inline bool exit_is_group_dead(void *ctx, struct task_struct *task)
{
	struct trace_event_raw_sched_process_exit *tp = ctx;

	if (bpf_core_field_exists(tp->group_dead))
		return BPF_CORE_READ(tp, group_dead);
	return BPF_CORE_READ(task, signal, live.counter) == 0;
}

/* Whether exit_is_group_dead() is the kernel's own answer (6.16+), not a guess. */
static __always_inline bool exit_group_dead_exact(void *ctx)
{
	struct trace_event_raw_sched_process_exit *tp = ctx;

	return bpf_core_field_exists(tp->group_dead);
}

/*
 * Whether the task is inside execve(): set by bprm_execve() for the whole
 * exec, old image and new.  A bitfield of task_struct since 2.6.30; read
 * only where it exists (false elsewhere: the caller then knows less, no
 * more).
 */
static __always_inline bool task_in_execve(struct task_struct *task)
{
	if (bpf_core_field_exists(task->in_execve))
		return BPF_CORE_READ_BITFIELD_PROBED(task, in_execve);
	return false;
}

#endif /* __VIGIL_CORE_FIXES_BPF_H */
