// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Mounts: mount(2), umount2(2), fsmount(2) and move_mount(2), with source,
 * target, filesystem type, flags and result.
 *
 *   syscalls   sys_enter_* keeps the arguments, sys_exit_* reads the
 *              strings and emits with the result.  The strings are the
 *              caller's memory, read at exit (the kernel has faulted the
 *              pages in by then): as passed by the caller, which a racing
 *              thread could have changed.  fsmount's type and source are
 *              the kernel's, from the fs context behind its fd.
 *   lsm        sb_mount / sb_umount / move_mount, with the same syscall
 *              programs: the kernel's copies of source and type and the
 *              mount point resolved from its struct path replace the
 *              caller's strings (strings = kernel).  Not loadable here
 *              (EPERM), compiled for kernels with BPF LSM.
 */
#include "common.bpf.h"
#include "syscall.bpf.h"
#include "path.bpf.h"
#include <bpf/bpf_tracing.h>
#include "mount.h"

VIGIL_RECORD(mount_event);
enum mount_op *__vigil_enum_mount_op __attribute__((unused));
enum mount_strings *__vigil_enum_mount_strings __attribute__((unused));

VIGIL_INFLIGHT(mount_calls, mount_event, 1024);

static __always_inline struct mount_calls_slot *
mount_enter(enum mount_op op, struct trace_event_raw_sys_enter *ctx, int nargs)
{
	struct mount_calls_slot *s = inflight_start(mount_calls, VIGIL_EV_MOUNT, ctx, nargs);

	if (s) {
		s->ev.op = op;
		s->ev.from_fd = -1;
		s->ev.to_fd = -1;
	}
	return s;
}

SEC("tracepoint/syscalls/sys_enter_mount")
int mount_enter_mount(struct trace_event_raw_sys_enter *ctx)
{
	/* (dev_name, dir_name, type, flags, data) */
	struct mount_calls_slot *s = mount_enter(MOUNT_OP_MOUNT, ctx, 5);

	if (s)
		s->ev.mount_flags = s->args[3];
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_umount")
int mount_enter_umount(struct trace_event_raw_sys_enter *ctx)
{
	/* umount2(name, flags) */
	struct mount_calls_slot *s = mount_enter(MOUNT_OP_UMOUNT, ctx, 2);

	if (s)
		s->ev.mount_flags = (__u32)s->args[1];
	return 0;
}

/*
 * fsmount's fs context (type and source: the kernel's strings), read at
 * entry: a successful fsmount clears the source (vfs_clean_context).
 * Whether fs_fd really was an fs context is known only at exit: a failed
 * call's strings are dropped there.
 */
static __always_inline void read_fs_context(struct mount_event *e)
{
	struct file *f = current_fd_file(e->from_fd);
	struct fs_context *fc;
	const char *name;

	fc = f ? BPF_CORE_READ(f, private_data) : NULL;
	if (!fc) {
		e->hdr.flags |= VIGIL_F_PARTIAL;
		return;
	}
	name = BPF_CORE_READ(fc, fs_type, name);
	if (!name || bpf_probe_read_kernel_str(e->fstype, sizeof(e->fstype), name) < 0)
		e->hdr.flags |= VIGIL_F_PARTIAL;
	name = BPF_CORE_READ(fc, source);
	if (name && bpf_probe_read_kernel_str(e->source, sizeof(e->source), name) < 0)
		e->hdr.flags |= VIGIL_F_PARTIAL;
	e->strings = MOUNT_STRINGS_KERNEL;
}

SEC("tracepoint/syscalls/sys_enter_fsmount")
int mount_enter_fsmount(struct trace_event_raw_sys_enter *ctx)
{
	/* (fs_fd, flags, attr_flags) */
	struct mount_calls_slot *s = mount_enter(MOUNT_OP_FSMOUNT, ctx, 3);

	if (s) {
		s->ev.from_fd = (int)s->args[0];
		s->ev.mount_flags = (__u32)s->args[1];
		s->ev.attr_flags = (__u32)s->args[2];
		read_fs_context(&s->ev);
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_move_mount")
int mount_enter_move_mount(struct trace_event_raw_sys_enter *ctx)
{
	/* (from_dfd, from_pathname, to_dfd, to_pathname, flags) */
	struct mount_calls_slot *s = mount_enter(MOUNT_OP_MOVE_MOUNT, ctx, 5);

	if (s) {
		s->ev.from_fd = (int)s->args[0];
		s->ev.to_fd = (int)s->args[2];
		s->ev.mount_flags = (__u32)s->args[4];
	}
	return 0;
}

static __always_inline void read_caller_strings(struct mount_calls_slot *s)
{
	struct mount_event *e = &s->ev;
	__u32 *flags = &e->hdr.flags;

	switch (e->op) {
	case MOUNT_OP_MOUNT:
		read_user_string(e->source, sizeof(e->source), (void *)s->args[0], flags);
		read_user_string(e->target, sizeof(e->target), (void *)s->args[1], flags);
		read_user_string(e->fstype, sizeof(e->fstype), (void *)s->args[2], flags);
		break;
	case MOUNT_OP_UMOUNT:
		read_user_string(e->target, sizeof(e->target), (void *)s->args[0], flags);
		break;
	case MOUNT_OP_MOVE_MOUNT:
		read_user_string(e->source, sizeof(e->source), (void *)s->args[1], flags);
		read_user_string(e->target, sizeof(e->target), (void *)s->args[3], flags);
		break;
	default:
		break;
	}
}

static __always_inline int mount_exit(long ret)
{
	struct mount_calls_slot *s = inflight_get(mount_calls);
	struct mount_event *e;

	if (!s)
		return 0;
	e = &s->ev;
	e->ret = ret;
	if (e->op == MOUNT_OP_FSMOUNT) {
		if (ret < 0) {	/* fs_fd may not have been an fs context */
			e->fstype[0] = 0;
			e->source[0] = 0;
			e->strings = MOUNT_STRINGS_CALLER;
			e->hdr.flags &= ~VIGIL_F_PARTIAL;
		}
	} else if (e->strings != MOUNT_STRINGS_KERNEL) {
		read_caller_strings(s);
	}
	emit_record(&e->hdr, sizeof(*e));
	inflight_end(mount_calls);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_mount")
int mount_exit_mount(struct trace_event_raw_sys_exit *ctx)
{
	return mount_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_umount")
int mount_exit_umount(struct trace_event_raw_sys_exit *ctx)
{
	return mount_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_fsmount")
int mount_exit_fsmount(struct trace_event_raw_sys_exit *ctx)
{
	return mount_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_move_mount")
int mount_exit_move_mount(struct trace_event_raw_sys_exit *ctx)
{
	return mount_exit(ctx->ret);
}

/*
 * -- LSM: the kernel's copies ---------------------------------------------------
 * Called inside the syscall, after the kernel copied the strings and
 * resolved the paths; they fill the caller's in-flight slot.  They only
 * observe (return 0): Vigil never denies.
 */
static __always_inline void kernel_path(struct mount_event *e, char *buf, __u32 size,
					const struct path *path)
{
	if (read_path(BPF_CORE_READ(path, mnt), BPF_CORE_READ(path, dentry), buf, size,
		      &e->hdr.flags) < 0)
		e->hdr.flags |= VIGIL_F_PARTIAL;
}

SEC("lsm/sb_mount")
int BPF_PROG(mount_lsm_sb_mount, const char *dev_name, const struct path *path,
	     const char *type, unsigned long flags, void *data)
{
	struct mount_calls_slot *s = inflight_get(mount_calls);
	struct mount_event *e;

	if (!s)
		return 0;
	e = &s->ev;
	e->strings = MOUNT_STRINGS_KERNEL;
	if (dev_name && bpf_probe_read_kernel_str(e->source, sizeof(e->source), dev_name) < 0)
		e->hdr.flags |= VIGIL_F_PARTIAL;
	if (type && bpf_probe_read_kernel_str(e->fstype, sizeof(e->fstype), type) < 0)
		e->hdr.flags |= VIGIL_F_PARTIAL;
	kernel_path(e, e->target, sizeof(e->target), path);
	return 0;
}

SEC("lsm/sb_umount")
int BPF_PROG(mount_lsm_sb_umount, struct vfsmount *mnt, int flags)
{
	struct mount_calls_slot *s = inflight_get(mount_calls);
	struct mount_event *e;

	if (!s)
		return 0;
	e = &s->ev;
	e->strings = MOUNT_STRINGS_KERNEL;
	if (read_path(mnt, BPF_CORE_READ(mnt, mnt_root), e->target, sizeof(e->target),
		      &e->hdr.flags) < 0)
		e->hdr.flags |= VIGIL_F_PARTIAL;
	return 0;
}

SEC("lsm/move_mount")
int BPF_PROG(mount_lsm_move_mount, const struct path *from_path, const struct path *to_path)
{
	struct mount_calls_slot *s = inflight_get(mount_calls);
	struct mount_event *e;

	if (!s)
		return 0;
	e = &s->ev;
	e->strings = MOUNT_STRINGS_KERNEL;
	kernel_path(e, e->source, sizeof(e->source), from_path);
	kernel_path(e, e->target, sizeof(e->target), to_path);
	return 0;
}
