/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * Absolute path of a struct path, built in BPF: the kernel's d_path()
 * (fs/d_path.c: prepend_path) redone with probe reads, because the
 * bpf_d_path() helper is only allowed from fentry/LSM programs and those
 * are not available everywhere Vigil runs.
 *
 * Like prepend_path, the string is built backwards from the end of a
 * per-CPU scratch buffer: each step prepends "/<name>" of the current
 * dentry and moves to d_parent; at the root of a mount it crosses to the
 * parent mount's mountpoint; it stops at a mount that is its own parent
 * (the root of the mount namespace, or of a detached tree).  Building
 * backwards needs no second pass and, when the path does not fit, keeps
 * the leaf end: the basename is what matters most.
 *
 * Results match readlink(/proc/<pid>/exe) read from the task's own mount
 * namespace root, with these differences:
 *   - a chroot is not a stop: the path is relative to the mount namespace
 *     root (d_path stops at the reader's fs->root);
 *   - a path cut at a bound (VIGIL_PATH_DEPTH components, VIGIL_PATH_MOUNTS
 *     mount crossings, the buffer) loses its root end and its leading '/',
 *     so it never passes for a complete absolute path; the caller's flags
 *     get VIGIL_F_TRUNCATED;
 *   - no rename_lock/mount_lock seqcount retry: a rename racing the walk
 *     can give a mixed path, as any lockless BPF walk can;
 *   - d_dname() dentries are rendered as simple_dname() does ("/<name>
 *     (deleted)"), the only form an executable can have (memfd, shmem);
 *     pipe/socket/anon-inode names ("pipe:[...]") are not reproduced.
 *
 * Include from one .bpf.c per object (defines a map).
 */
#ifndef __VIGIL_PATH_BPF_H
#define __VIGIL_PATH_BPF_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "vigil.h"
#include "core_fixes.bpf.h"

/* Power of two: offsets into the scratch buffer are masked with it. */
#define VIGIL_PATH_MAX		4096
#define VIGIL_PATH_DEPTH	64	/* path components walked */
#define VIGIL_PATH_MOUNTS	16	/* mount crossings walked */
#define VIGIL_NAME_MAX		255	/* NAME_MAX, and a mask: 2^8 - 1 */
#define VIGIL_PATH_DELETED	" (deleted)"	/* as d_path() appends it */

/* vmlinux.h has no errno values. */
#ifndef ENOENT
#define ENOENT	2
#endif
#ifndef ENOMEM
#define ENOMEM	12
#endif
#ifndef EFAULT
#define EFAULT	14
#endif

/*
 * Scratch where the path is built; too big for the 512-byte stack.  The
 * NAME_MAX + 1 slack after the buffer lets the verifier accept a name read
 * of up to NAME_MAX bytes at any masked offset; it is never written.
 */
struct vigil_path_scratch {
	char buf[VIGIL_PATH_MAX];
	char slack[VIGIL_NAME_MAX + 1];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vigil_path_scratch);
} vigil_path_scratch SEC(".maps");

enum path_walk_state {
	PATH_WALK_RUNNING = 0,
	PATH_WALK_DONE,		/* reached the namespace (or a tree's) root */
	PATH_WALK_CUT,		/* a bound was hit: the root end is missing */
	PATH_WALK_FAULT,	/* a kernel read failed: no result */
};

/* bpf_loop context: lives on the caller's stack. */
struct path_walk {
	char *buf;			/* vigil_path_scratch.buf */
	struct dentry *dentry;		/* next dentry to prepend */
	struct mount *mnt;		/* the mount it is seen through */
	struct dentry *mnt_root;	/* mnt->mnt.mnt_root, cached */
	__u32 pos;			/* the string so far is buf[pos..] */
	__u32 depth;			/* components prepended */
	__u32 mounts;			/* mount crossings */
	__u32 state;			/* enum path_walk_state */
};

/* Prepend "/<name of d>"; a path_walk_state. */
static __always_inline __u32 path_prepend_name(struct path_walk *w,
					       struct dentry *d)
{
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	__u32 len = BPF_CORE_READ(d, d_name.len);
	__u32 pos = w->pos;

	if (w->depth >= VIGIL_PATH_DEPTH)
		return PATH_WALK_CUT;
	/* room for the name and its '/' (pos is at most VIGIL_PATH_MAX - 1) */
	if (len > VIGIL_NAME_MAX || len + 1 > pos)
		return PATH_WALK_CUT;
	pos -= len;
	/*
	 * The exact qstr length, like the kernel's prepend_name; the masks
	 * only restate the bounds checked above for the verifier.
	 */
	if (bpf_probe_read_kernel(&w->buf[pos & (VIGIL_PATH_MAX - 1)],
				  len & VIGIL_NAME_MAX, name))
		return PATH_WALK_FAULT;
	pos--;
	w->buf[pos & (VIGIL_PATH_MAX - 1)] = '/';
	w->pos = pos;
	w->depth++;
	return PATH_WALK_RUNNING;
}

/* One step of prepend_path(): cross a mount or prepend one component. */
static long path_step(__u32 i, struct path_walk *w)
{
	/*
	 * Locals, not w->...: BPF_CORE_READ(w->mnt, ...) would ask CO-RE to
	 * relocate our own struct path_walk, which is not in the kernel.
	 */
	struct dentry *d = w->dentry, *parent;
	struct mount *mnt = w->mnt, *up;

	if (d == w->mnt_root) {
		up = BPF_CORE_READ(mnt, mnt_parent);
		if (!up || up == mnt) {
			/* namespace root, or the root of a detached tree */
			w->state = PATH_WALK_DONE;
			return 1;
		}
		if (w->mounts >= VIGIL_PATH_MOUNTS) {
			w->state = PATH_WALK_CUT;
			return 1;
		}
		w->mounts++;
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = up;
		w->mnt_root = BPF_CORE_READ(up, mnt.mnt_root);
		return 0;
	}
	parent = BPF_CORE_READ(d, d_parent);
	if (!parent || parent == d) {
		/*
		 * A root that is not the mount's: a disconnected dentry.
		 * The kernel's walk stops here too ("escaped"); a leaf at
		 * least keeps its own name.
		 */
		w->state = w->depth ? PATH_WALK_DONE : path_prepend_name(w, d);
		if (w->state == PATH_WALK_RUNNING)
			w->state = PATH_WALK_DONE;
		return 1;
	}
	w->state = path_prepend_name(w, d);
	if (w->state != PATH_WALK_RUNNING)
		return 1;
	w->dentry = parent;
	return 0;
}

/*
 * d_path() hands a dentry with d_op->d_dname to that method unless it is
 * its mount's root; for an executable that is simple_dname() (memfd,
 * shmem files): "/<name> (deleted)", with no walk up.
 */
static __always_inline bool path_uses_dname(struct dentry *d,
					    struct dentry *mnt_root)
{
	if (!BPF_CORE_READ(d, d_op, d_dname))
		return false;
	return BPF_CORE_READ(d, d_parent) != d || d != mnt_root;
}

/* d_unlinked(): unhashed and not a root, i.e. removed from its directory. */
static __always_inline bool path_unlinked(struct dentry *d)
{
	return !BPF_CORE_READ(d, d_hash.pprev) && BPF_CORE_READ(d, d_parent) != d;
}

/*
 * Write the absolute path of (vfsmnt, dentry) into buf (size bytes, a
 * constant for the verifier) as a NUL-terminated string.
 *
 * Returns the bytes written with the NUL, or a negative errno with buf
 * set to "".  A path cut at a bound keeps its leaf end, has no leading
 * '/', and sets VIGIL_F_TRUNCATED in *flags.
 */
static __always_inline long read_path(struct vfsmount *vfsmnt,
				      struct dentry *dentry,
				      char *buf, __u32 size, __u32 *flags)
{
	struct vigil_path_scratch *s;
	struct path_walk w = {};
	__u32 zero = 0, end = VIGIL_PATH_MAX - 1, total, src;
	bool dname;
	long n;

	buf[0] = 0;
	if (!vfsmnt || !dentry)
		return -ENOENT;
	s = bpf_map_lookup_elem(&vigil_path_scratch, &zero);
	if (!s)
		return -ENOMEM;

	w.buf = s->buf;
	w.dentry = dentry;
	w.mnt = vfsmount_real_mount(vfsmnt);
	w.mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);

	dname = path_uses_dname(dentry, w.mnt_root);
	s->buf[end] = 0;
	if (dname || path_unlinked(dentry)) {
		end -= sizeof(VIGIL_PATH_DELETED) - 1;
		__builtin_memcpy(&s->buf[VIGIL_PATH_MAX - sizeof(VIGIL_PATH_DELETED)],
				 VIGIL_PATH_DELETED, sizeof(VIGIL_PATH_DELETED) - 1);
	}
	w.pos = end;

	if (dname) {
		w.state = path_prepend_name(&w, dentry);
		if (w.state == PATH_WALK_RUNNING)
			w.state = PATH_WALK_DONE;
	} else {
		/* Each step adds a component or crosses a mount; one more to stop. */
		bpf_loop(VIGIL_PATH_DEPTH + VIGIL_PATH_MOUNTS + 1, path_step, &w, 0);
	}

	switch (w.state) {
	case PATH_WALK_DONE:
		if (w.pos == end) {	/* nothing prepended: a root, "/" */
			w.pos--;
			s->buf[w.pos & (VIGIL_PATH_MAX - 1)] = '/';
		}
		break;
	case PATH_WALK_FAULT:
		return -EFAULT;
	default:		/* CUT, or the loop itself was cut short */
		*flags |= VIGIL_F_TRUNCATED;
		if (w.pos < end)
			w.pos++;	/* drop the leading '/' */
		break;
	}

	/* Too long for the caller: keep the leaf end here too. */
	total = VIGIL_PATH_MAX - w.pos;
	src = w.pos;
	if (total > size) {
		src += total - size;
		/* a cut path must not start with '/': it would look whole */
		if (s->buf[src & (VIGIL_PATH_MAX - 1)] == '/')
			src++;
		*flags |= VIGIL_F_TRUNCATED;
	}
	n = bpf_probe_read_kernel_str(buf, size,
				      &s->buf[src & (VIGIL_PATH_MAX - 1)]);
	if (n < 0)
		buf[0] = 0;
	return n;
}

/* The task's executable (mm->exe_file), as /proc/<pid>/exe shows it. */
static __always_inline long read_task_exe(struct task_struct *task,
					  char *buf, __u32 size, __u32 *flags)
{
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);

	if (!exe) {
		buf[0] = 0;
		return -ENOENT;	/* kernel thread, or exiting */
	}
	return read_path(BPF_CORE_READ(exe, f_path.mnt),
			 BPF_CORE_READ(exe, f_path.dentry), buf, size, flags);
}

#endif /* __VIGIL_PATH_BPF_H */
