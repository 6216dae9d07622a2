// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * File access to watched paths: opens (kind open), renames, unlinks,
 * chmod/chown and truncation (kind file), at each syscall's exit.
 *
 * Matching is in the kernel and cheap for the opens nobody watches:
 *   - a successful open (or an fd call: fchmod, fchown, ftruncate) is
 *     matched on the opened dentry: its parent directory's inode in
 *     file_dirs (one hash lookup: most opens leave here), then, for a
 *     directory watched by name, (dir inode, name) in the file_names LPM
 *     trie (exact names and name prefixes such as cron*).  Inodes, not
 *     strings: a symlink, a relative path, a bind mount or a rewritten
 *     path string all end at the same inode.  procfs files are matched by
 *     name alone (/proc/PID/mem: dir key 0/0).  The path reported is
 *     walked from the opened file (path.bpf.h), not what the caller passed.
 *   - a failed open and the path calls (rename, unlink, chmod, chown,
 *     truncate) have no file: the caller's string, read at exit (the
 *     kernel has faulted it in), made absolute against the cwd or dirfd,
 *     is matched in the file_paths LPM trie and reported as passed.
 * User space fills the three maps from the watch list before attaching.
 *
 * Arguments are read at exit from the saved user registers: one program
 * per call instead of an enter/exit pair (each costs every open).
 */
#include "common.bpf.h"
#include "syscall.bpf.h"
#include "path.bpf.h"
#include <bpf/bpf_tracing.h>
#include "file.h"

VIGIL_RECORD(open_event);
VIGIL_RECORD(file_event);
enum file_path_source *__vigil_enum_file_path_source __attribute__((unused));
enum file_op *__vigil_enum_file_op __attribute__((unused));
enum file_watch_access *__vigil_enum_file_watch_access __attribute__((unused));
enum open_hook *__vigil_enum_open_hook __attribute__((unused));

#define PROC_SUPER_MAGIC 0x9fa0
#define S_IFMT 00170000
#define S_IFDIR 0040000
#define O_ACCMODE 00000003
#define O_RDONLY 00000000
#define O_WRONLY 00000001
#define O_CREAT 00000100
#define O_TRUNC 00001000
#define FMODE_WRITE 0x2
#define FMODE_NOACCOUNT (1U << 29)	/* include/linux/fs.h, 6.1 to 6.18 alike */
#define VIGIL_MOUNT_STACK 4	/* mounts stacked on one name, crossed to find it */
#define AT_FDCWD -100

/* vigil opensnoop: -p (a process), --all (every open, no watch list) */
const volatile __u32 targ_tgid = 0;
const volatile __u32 match_all = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct file_dir_key);
	__type(value, struct file_dir_value);
} file_dirs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct file_name_key);
	__type(value, __u32);	/* enum file_watch_access bits */
} file_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct file_path_key);
	__type(value, __u32);
} file_paths SEC(".maps");

/*
 * A caller's path made absolute: the base (<= FILE_KEY_SIZE) then the
 * string as passed (<= FILE_KEY_SIZE).  Starts like struct file_path_key:
 * the trie reads its first FILE_KEY_SIZE bytes.
 */
struct caller_path {
	__u32 prefixlen;
	char path[2 * FILE_KEY_SIZE];
	__u32 len;		/* strlen(path) */
};

/* A path call's paths as the kernel resolved them (path_* LSM hooks). */
struct lsm_paths {
	__u32 flags;			/* VIGIL_F_TRUNCATED / PARTIAL of the walks */
	char path[FILE_PATH_SIZE];
	char path2[FILE_PATH_SIZE];
};

/* Records and the caller's path: too big for the 512-byte stack. */
struct file_scratch {
	struct open_event open;
	struct file_event file;
	struct caller_path caller;
	struct lsm_paths lsm;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct file_scratch);
} file_scratch SEC(".maps");

/*
 * What the path_* LSM hooks saw of the path call a thread is in, until its
 * return: LSM_SEEN_UNWATCHED (the kernel's objects are not watched: the
 * caller's string, whatever it says by then, is not matched), or
 * LSM_SEEN_WATCHED with the kernel's paths in file_lsm_paths.  No entry:
 * no hook ran (a kernel without BPF-LSM, or the call failed before the
 * check), and the caller's string is matched.
 */
enum lsm_seen {
	LSM_SEEN_UNWATCHED = 1,
	LSM_SEEN_WATCHED = 2,
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);		/* tid */
	__type(value, __u32);		/* enum lsm_seen */
} file_lsm_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);	/* watched path calls in flight at once */
	__type(key, __u32);
	__type(value, struct lsm_paths);
} file_lsm_paths SEC(".maps");

static __always_inline struct file_scratch *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&file_scratch, &zero);
}

static __always_inline struct pt_regs *user_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/* Write, create or truncate: what the write watch list is for. */
static __always_inline __u32 open_access(__u32 flags)
{
	if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC)))
		return FILE_WATCH_WRITE;
	return FILE_WATCH_READ;
}

/*
 * The dentry that names `d` where it was opened.  A file or directory
 * bind-mounted over a name (mount --bind /tmp/x /etc/shadow) is the root
 * of its own mount: its parent directory and name are those of the
 * source (/tmp, "x"); the name it was opened by is its mountpoint in
 * the parent mount (/etc, "shadow").  Mounts stacked on one name are
 * crossed up to VIGIL_MOUNT_STACK deep.
 */
static __always_inline struct dentry *naming_dentry(struct vfsmount *vfsmnt, struct dentry *d)
{
	struct mount *mnt = vfsmount_real_mount(vfsmnt), *up;

#pragma unroll
	for (int i = 0; i < VIGIL_MOUNT_STACK; i++) {
		if (d != BPF_CORE_READ(mnt, mnt.mnt_root))
			break;
		up = BPF_CORE_READ(mnt, mnt_parent);
		if (!up || up == mnt)
			break;	/* the namespace's root */
		d = BPF_CORE_READ(mnt, mnt_mountpoint);
		mnt = up;
	}
	return d;
}

/*
 * What dentry `d`, opened through `vfsmnt`, is watched for (enum
 * file_watch_access bits; 0: not watched).  The fast path: few reads, one
 * hash lookup for a miss.
 */
static __always_inline __u32 watched_dentry(struct vfsmount *vfsmnt, struct dentry *d)
{
	struct file_name_key nk = {};
	struct file_dir_key k = {};
	struct file_dir_value *v;
	struct super_block *sb;
	__u32 *access;
	long n;

	d = naming_dentry(vfsmnt, d);
	sb = BPF_CORE_READ(d, d_sb);
	k.dev = BPF_CORE_READ(sb, s_dev);
	k.ino = BPF_CORE_READ(d, d_parent, d_inode, i_ino);
	v = bpf_map_lookup_elem(&file_dirs, &k);
	if (v) {
		if (v->how & FILE_DIR_ALL)
			return v->access;	/* named entries of a tree add nothing */
		nk.dev = k.dev;
		nk.ino_lo = (__u32)k.ino;
		nk.ino_hi = k.ino >> 32;
	} else if (k.dev >> 20 ||
		   BPF_CORE_READ(sb, s_magic) != PROC_SUPER_MAGIC) {
		/* the common case; s_magic read only for anonymous devices (major 0) */
		return 0;
	}
	/* a directory watched by name, or procfs (by name alone: dir key 0/0) */
	n = bpf_probe_read_kernel_str(nk.name, sizeof(nk.name), BPF_CORE_READ(d, d_name.name));
	if (n <= 0)
		return 0;
	nk.prefixlen = 96 + 8 * n;
	access = bpf_map_lookup_elem(&file_names, &nk);
	return access ? *access : 0;
}

/* The same for an opened file (its struct path in one read: every open). */
static __always_inline __u32 watched_file(struct file *f)
{
	struct path p = {};

	if (bpf_core_read(&p, sizeof(p), &f->f_path))
		return 0;
	return watched_dentry(p.mnt, p.dentry);
}

static __always_inline bool is_dir(struct dentry *d)
{
	return (BPF_CORE_READ(d, d_inode, i_mode) & S_IFMT) == S_IFDIR;
}

/*
 * The caller's path `upath` (relative to dirfd `dfd`, or absolute) as an
 * absolute string in s->caller; true when it is watched for `want`.  Not
 * normalised: "/etc/./shadow" or "../etc/shadow" does not match (only
 * failed opens and path calls are matched this way).
 */
static __always_inline bool watched_caller_path(struct file_scratch *s, long dfd,
						const char *upath, __u32 want, __u32 *flags)
{
	struct caller_path *c = &s->caller;
	struct vfsmount *mnt;
	struct dentry *dentry;
	__u32 len = 0, total, *access;
	__u64 off;
	char first = 0;
	long n;

	c->path[0] = 0;
	c->len = 0;
	if (!upath || bpf_probe_read_user(&first, 1, upath))
		return false;
	if (first != '/') {
		if ((int)dfd == AT_FDCWD) {
			struct task_struct *task = (struct task_struct *)bpf_get_current_task();

			mnt = BPF_CORE_READ(task, fs, pwd.mnt);
			dentry = BPF_CORE_READ(task, fs, pwd.dentry);
		} else {
			struct file *f = current_fd_file(dfd);

			if (!f)
				return false;
			mnt = BPF_CORE_READ(f, f_path.mnt);
			dentry = BPF_CORE_READ(f, f_path.dentry);
		}
		n = read_path(mnt, dentry, c->path, FILE_KEY_SIZE, flags);
		if (n <= 0)
			return false;
		len = n - 1;
		if (len == 0 || c->path[(len - 1) & (FILE_KEY_SIZE - 1)] != '/') {
			c->path[len & (FILE_KEY_SIZE - 1)] = '/';
			len++;
		}
	}
	/*
	 * 64-bit and opaque to the compiler: checked and added in one
	 * register (6.1's verifier loses the bound across the copies clang
	 * makes of a 32-bit value)
	 */
	off = len;
	barrier_var(off);
	if (off > FILE_KEY_SIZE)
		return false;
	n = bpf_probe_read_user_str(c->path + off, FILE_KEY_SIZE, upath);
	if (n <= 0) {
		*flags |= VIGIL_F_PARTIAL;
		return false;
	}
	if (n == FILE_KEY_SIZE)
		*flags |= VIGIL_F_TRUNCATED;
	total = len + n;
	c->len = total - 1;
	c->prefixlen = 8 * (total < FILE_KEY_SIZE ? total : FILE_KEY_SIZE);
	access = bpf_map_lookup_elem(&file_paths, c);
	return access && (*access & want);
}

/* Send a record whose last member (a string) is cut after `len` bytes. */
static __always_inline void emit_tail(struct vigil_header *hdr, __u32 fixed, __u32 len, __u32 max)
{
	/* the verifier needs the bound on the register the helper gets */
	barrier_var(len);
	if (len > max)
		len = max;
	barrier_var(len);
	emit_record(hdr, fixed + (len & (FILE_PATH_SIZE - 1 | FILE_PATH_SIZE)));
}

/* -- opens ----------------------------------------------------------------------- */

/*
 * A file opened by handle that the kernel could not name: open_by_handle_at()
 * of a file whose dentry left the cache (memory pressure, drop_caches)
 * gets a disconnected dentry (exportfs, d_obtain_alias), its own parent,
 * named "/", which matches no watched directory and name.  It may be a
 * watched file: it counts as one, for both accesses, named in its record by
 * device and inode (the path partial).  Only inside open_by_handle_at():
 * knfsd's opens by handle are no syscalls, and a directory is always
 * reconnected by the kernel.
 */
static __always_inline __u32 unnamed_by_handle(struct file *f, long sc, __u32 *hflags)
{
	struct dentry *d;

	if (sc != VIGIL_SYS_open_by_handle_at)
		return 0;
	d = BPF_CORE_READ(f, f_path.dentry);
	if (BPF_CORE_READ(d, d_parent) != d || BPF_CORE_READ(d, d_sb, s_root) == d)
		return 0;
	*hflags |= VIGIL_F_PARTIAL;
	return FILE_WATCH_READ | FILE_WATCH_WRITE;
}

/* open_how.flags and .mode (include/uapi/linux/openat2.h) */
struct user_open_how {
	__u64 flags;
	__u64 mode;
};

/* The arguments of an open call, from the caller's saved registers. */
struct open_args {
	long dfd;
	const char *upath;
	__u32 flags;
	__u32 mode;
};

static __always_inline void open_args(struct open_args *a, enum vigil_syscall sc)
{
	struct pt_regs *regs = user_regs();
	struct user_open_how how = {};

	a->dfd = AT_FDCWD;
	a->upath = NULL;
	a->flags = 0;
	a->mode = 0;
	if (!regs)
		return;
	switch (sc) {
	case VIGIL_SYS_openat:
		a->dfd = PT_REGS_PARM1_CORE_SYSCALL(regs);
		a->upath = (const char *)PT_REGS_PARM2_CORE_SYSCALL(regs);
		a->flags = PT_REGS_PARM3_CORE_SYSCALL(regs);
		a->mode = PT_REGS_PARM4_CORE_SYSCALL(regs);
		break;
	case VIGIL_SYS_openat2:
		a->dfd = PT_REGS_PARM1_CORE_SYSCALL(regs);
		a->upath = (const char *)PT_REGS_PARM2_CORE_SYSCALL(regs);
		/* the kernel copied it in: paged in, like the path */
		bpf_probe_read_user(&how, sizeof(how), (void *)PT_REGS_PARM3_CORE_SYSCALL(regs));
		a->flags = how.flags;
		a->mode = how.mode;
		break;
#ifdef __TARGET_ARCH_x86
	case VIGIL_SYS_open:
		a->upath = (const char *)PT_REGS_PARM1_CORE_SYSCALL(regs);
		a->flags = PT_REGS_PARM2_CORE_SYSCALL(regs);
		a->mode = PT_REGS_PARM3_CORE_SYSCALL(regs);
		break;
	case VIGIL_SYS_creat:
		a->upath = (const char *)PT_REGS_PARM1_CORE_SYSCALL(regs);
		a->flags = O_CREAT | O_WRONLY | O_TRUNC;
		a->mode = PT_REGS_PARM2_CORE_SYSCALL(regs);
		break;
#endif
	case VIGIL_SYS_open_by_handle_at:
		/* (mount_fd, handle, flags): no path to match a failure by; a
		 * success is matched by the file it opened, as any other */
		a->flags = PT_REGS_PARM3_CORE_SYSCALL(regs);
		break;
	default:
		break;
	}
}

/*
 * Send the record of an open: of file `f` (found by the kernel), or of
 * the caller's path in s->caller (a failed open).  Arguments in `a`.
 */
static __always_inline void send_open(struct file_scratch *s, struct file *f,
				      const struct open_args *a, long ret, long sc,
				      __u32 want, __u32 hflags, enum open_hook hook)
{
	struct open_event *e = &s->open;
	struct dentry *d;
	__u32 len;
	long n;

	fill_header(&e->hdr, VIGIL_EV_OPEN);
	e->hdr.flags = hflags;
	e->ret = ret;
	e->open_flags = a->flags;
	e->mode = a->mode;
	e->access = want;
	e->syscall = sc;
	e->hook = hook;
	if (f) {
		d = BPF_CORE_READ(f, f_path.dentry);
		e->path_source = FILE_PATH_KERNEL;
		e->ino = BPF_CORE_READ(d, d_inode, i_ino);
		e->dev = BPF_CORE_READ(d, d_sb, s_dev);
		n = read_path(BPF_CORE_READ(f, f_path.mnt), d, e->path, sizeof(e->path),
			      &e->hdr.flags);
		if (n < 0)
			e->hdr.flags |= VIGIL_F_PARTIAL;
		len = n > 0 ? n - 1 : 0;
	} else {
		e->path_source = FILE_PATH_CALLER;
		e->ino = 0;
		e->dev = 0;
		bpf_probe_read_kernel(e->path, sizeof(e->path), s->caller.path);
		len = s->caller.len;
	}
	/* the path is the record's tail: sent up to its NUL */
	emit_tail(&e->hdr, offsetof(struct open_event, path), len, sizeof(e->path));
}

/*
 * At an open call's return.  A successful open is matched before anything
 * else is read (the arguments only once it is watched): most opens leave
 * after the fd's file, its dentry's parent and one lookup.  `failed_only`:
 * the file_open LSM hook has reported the successes.
 */
static __always_inline int open_done(long ret, enum vigil_syscall sc, bool failed_only)
{
	struct open_args a;
	struct file_scratch *s;
	struct file *f = NULL;
	__u32 watched, want, hflags = 0;

	if (failed_only && ret >= 0)
		return 0;
	if (targ_tgid && (bpf_get_current_pid_tgid() >> 32) != targ_tgid)
		return 0;
	if (ret >= 0) {
		f = current_fd_file(ret);
		if (!f)
			return 0;
		watched = watched_file(f);
		if (!watched && !match_all) {
			watched = unnamed_by_handle(f, sc, &hflags);
			if (!watched)
				return 0;
		}
		open_args(&a, sc);
		want = open_access(a.flags);
		/* a directory opened for a listing is not an access to its entries */
		if (!match_all && (!(watched & want) || is_dir(BPF_CORE_READ(f, f_path.dentry))))
			return 0;
		s = scratch();
	} else {
		open_args(&a, sc);
		want = open_access(a.flags);
		s = scratch();
		if (!s || (!watched_caller_path(s, a.dfd, a.upath, want, &hflags) && !match_all))
			return 0;
	}
	if (s)
		send_open(s, f, &a, ret, sc, want, hflags, OPEN_HOOK_RETURN);
	return 0;
}

#define OPEN_EXIT(name)							\
	SEC("tracepoint/syscalls/sys_exit_" #name)			\
	int file_##name##_exit(struct trace_event_raw_sys_exit *ctx)	\
	{								\
		return open_done(ctx->ret, VIGIL_SYS_##name, false);	\
	}

OPEN_EXIT(openat)
OPEN_EXIT(openat2)
OPEN_EXIT(open_by_handle_at)
#ifdef __TARGET_ARCH_x86
OPEN_EXIT(open)
OPEN_EXIT(creat)
#endif

/*
 * Where fexit works (not here: EPERM), each open call's own entry point, at
 * its return: a trampoline instead of a tracepoint's perf record.  Not
 * do_sys_openat2(), which all of them go through: it is static, so a
 * build may inline it into do_sys_open() and leave a trampoline on its
 * out-of-line copy seeing openat2 alone; the syscall wrappers are only
 * ever called through the syscall table.  The arguments are read from the
 * saved registers, as at the tracepoints.
 */
#if defined(__TARGET_ARCH_x86)
#define SYSCALL_FN(name) "__x64_sys_" #name
#elif defined(__TARGET_ARCH_arm64)
#define SYSCALL_FN(name) "__arm64_sys_" #name
#endif

#define OPEN_FEXIT(name)						\
	SEC("fexit/" SYSCALL_FN(name))					\
	int BPF_PROG(file_##name##_fexit, struct pt_regs *regs, long ret)	\
	{								\
		return open_done(ret, VIGIL_SYS_##name, false);		\
	}								\
	/* beside the LSM hook: the failures, which it does not see */	\
	SEC("fexit/" SYSCALL_FN(name))					\
	int BPF_PROG(file_##name##_fexit_failed, struct pt_regs *regs, long ret)	\
	{								\
		return open_done(ret, VIGIL_SYS_##name, true);		\
	}

OPEN_FEXIT(openat)
OPEN_FEXIT(openat2)
OPEN_FEXIT(open_by_handle_at)
#ifdef __TARGET_ARCH_x86
OPEN_FEXIT(open)
OPEN_FEXIT(creat)
#endif

/*
 * Where BPF-LSM works (not here: EPERM): the kernel's own check inside
 * every open, whatever path led to it: open calls, io_uring (its opens
 * never pass an open syscall's return), open_by_handle_at, a file opened
 * by the kernel on the caller's behalf.  The file is the one being
 * opened, matched by its inode before anything else is read.  It runs
 * before the open can still fail (a driver's open method) and before an
 * fd exists: the record says it was allowed (ret 0, hook "lsm").  Opens
 * that fail are reported at the calls' returns (file_*_fexit_failed).
 * Observes only: returns 0, Vigil never denies.
 */
SEC("lsm/file_open")
int BPF_PROG(file_open_lsm, struct file *f)
{
	struct open_args a = { .dfd = AT_FDCWD };
	struct file_scratch *s;
	__u32 watched, want, hflags = 0;
	long sc;

	if (targ_tgid && (bpf_get_current_pid_tgid() >> 32) != targ_tgid)
		return 0;
	/*
	 * A stacking filesystem's own open of the file beneath (overlayfs:
	 * open_with_fake_path() on 6.1, backing files later) is the same open
	 * seen twice; those files are allocated "noaccount".
	 */
	if (BPF_CORE_READ(f, f_mode) & FMODE_NOACCOUNT)
		return 0;
	watched = watched_file(f);
	if (!watched && !match_all) {
		watched = unnamed_by_handle(f, current_syscall_nr(), &hflags);
		if (!watched)
			return 0;
	}
	sc = current_syscall_nr();
	switch (sc) {
	case VIGIL_SYS_openat:
	case VIGIL_SYS_openat2:
#ifdef __TARGET_ARCH_x86
	case VIGIL_SYS_open:
	case VIGIL_SYS_creat:
#endif
		/* the call's own flags: the file's lose O_CREAT and O_TRUNC */
		open_args(&a, sc);
		want = open_access(a.flags);
		break;
	default:
		a.flags = BPF_CORE_READ(f, f_flags);
		want = (BPF_CORE_READ(f, f_mode) & FMODE_WRITE) ? FILE_WATCH_WRITE :
								 FILE_WATCH_READ;
		break;
	}
	if (!match_all && (!(watched & want) || is_dir(BPF_CORE_READ(f, f_path.dentry))))
		return 0;
	s = scratch();
	if (s)
		send_open(s, f, &a, 0, sc, want, hflags, OPEN_HOOK_LSM);
	return 0;
}

/*
 * -- path calls as the kernel resolved them: the path_* LSM hooks --------------------
 * Where BPF-LSM works (and the kernel has CONFIG_SECURITY_PATH): called
 * inside rename, unlink, chmod, chown and truncate with the dentries the
 * kernel looked up.  Matched by inode like an open, so a path string
 * that is not normalised ("/etc/./shadow") or that another thread
 * rewrites around the call neither hides a change to a watched file nor
 * forges one.  Only inside the path calls this sensor reports at their
 * returns (io_uring's renames and unlinks are not followed).  Observe
 * only: return 0.
 */
static __always_inline bool path_call_in_progress(void)
{
	switch (current_syscall_nr()) {
	case VIGIL_SYS_renameat2:
	case VIGIL_SYS_unlinkat:
	case VIGIL_SYS_fchmodat:
	case VIGIL_SYS_fchownat:
	case VIGIL_SYS_truncate:
#ifdef __TARGET_ARCH_x86
	case VIGIL_SYS_rename:
	case VIGIL_SYS_renameat:
	case VIGIL_SYS_unlink:
	case VIGIL_SYS_chmod:
	case VIGIL_SYS_chown:
	case VIGIL_SYS_lchown:
#endif
		return true;
	default:
		return false;
	}
}

static __always_inline int lsm_path_call(struct vfsmount *mnt, struct dentry *d,
					 struct vfsmount *mnt2, struct dentry *d2)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), state = LSM_SEEN_UNWATCHED;
	struct file_scratch *s;
	struct lsm_paths *p;

	if (!path_call_in_progress())
		return 0;
	if ((watched_dentry(mnt, d) & FILE_WATCH_WRITE) ||
	    (d2 && (watched_dentry(mnt2, d2) & FILE_WATCH_WRITE))) {
		s = scratch();
		if (!s)
			return 0;
		p = &s->lsm;
		p->flags = 0;
		p->path2[0] = 0;
		if (read_path(mnt, d, p->path, sizeof(p->path), &p->flags) < 0)
			p->flags |= VIGIL_F_PARTIAL;
		if (d2 && read_path(mnt2, d2, p->path2, sizeof(p->path2), &p->flags) < 0)
			p->flags |= VIGIL_F_PARTIAL;
		if (bpf_map_update_elem(&file_lsm_paths, &tid, p, BPF_ANY))
			return 0;	/* no kernel view kept: the string is matched */
		state = LSM_SEEN_WATCHED;
	}
	bpf_map_update_elem(&file_lsm_seen, &tid, &state, BPF_ANY);
	return 0;
}

SEC("lsm/path_unlink")
int BPF_PROG(file_lsm_unlink, const struct path *dir, struct dentry *dentry)
{
	return lsm_path_call(BPF_CORE_READ(dir, mnt), dentry, NULL, NULL);
}

SEC("lsm/path_rename")
int BPF_PROG(file_lsm_rename, const struct path *old_dir, struct dentry *old_dentry,
	     const struct path *new_dir, struct dentry *new_dentry)
{
	return lsm_path_call(BPF_CORE_READ(old_dir, mnt), old_dentry,
			     BPF_CORE_READ(new_dir, mnt), new_dentry);
}

SEC("lsm/path_chmod")
int BPF_PROG(file_lsm_chmod, const struct path *path)
{
	return lsm_path_call(BPF_CORE_READ(path, mnt), BPF_CORE_READ(path, dentry), NULL, NULL);
}

SEC("lsm/path_chown")
int BPF_PROG(file_lsm_chown, const struct path *path)
{
	return lsm_path_call(BPF_CORE_READ(path, mnt), BPF_CORE_READ(path, dentry), NULL, NULL);
}

SEC("lsm/path_truncate")
int BPF_PROG(file_lsm_truncate, const struct path *path)
{
	return lsm_path_call(BPF_CORE_READ(path, mnt), BPF_CORE_READ(path, dentry), NULL, NULL);
}

/* What the hooks saw of this thread's call (0: nothing), taken. */
static __always_inline __u32 take_lsm_seen(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), state;
	__u32 *seen = bpf_map_lookup_elem(&file_lsm_seen, &tid);

	if (!seen)
		return 0;
	state = *seen;
	bpf_map_delete_elem(&file_lsm_seen, &tid);
	return state;
}

/* -- changes: rename, unlink, chmod, chown, truncate -------------------------------- */

static __always_inline struct file_event *change_start(struct file_scratch *s, long ret,
						       enum file_op op, enum vigil_syscall sc)
{
	struct file_event *e = &s->file;

	e->hdr.flags = 0;
	e->ret = ret;
	e->op = op;
	e->syscall = sc;
	e->mode = 0;
	e->owner_uid = (__u32)-1;
	e->owner_gid = (__u32)-1;
	e->call_flags = 0;
	e->length = 0;
	e->path[0] = 0;
	e->path2[0] = 0;
	return e;
}

static __always_inline void change_send(struct file_event *e, __u32 len2)
{
	__u32 flags = e->hdr.flags;

	fill_header(&e->hdr, VIGIL_EV_FILE);
	e->hdr.flags = flags;
	/* path2 (a rename's destination) is the tail: sent up to its NUL */
	emit_tail(&e->hdr, offsetof(struct file_event, path2), len2, sizeof(e->path2));
}

/*
 * The kernel's view of a path call, when its LSM hooks saw it: true when
 * that settled it (sent with the kernel's paths, or not watched).
 */
static __always_inline bool kernel_view(struct file_event *e, __u32 seen)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct lsm_paths *p;
	long n;

	if (seen == LSM_SEEN_UNWATCHED)
		return true;
	if (seen != LSM_SEEN_WATCHED)
		return false;
	p = bpf_map_lookup_elem(&file_lsm_paths, &tid);
	if (!p)
		return false;	/* evicted: the caller's string after all */
	e->path_source = FILE_PATH_KERNEL;
	e->hdr.flags |= p->flags;
	bpf_probe_read_kernel_str(e->path, sizeof(e->path), p->path);
	n = bpf_probe_read_kernel_str(e->path2, sizeof(e->path2), p->path2);
	bpf_map_delete_elem(&file_lsm_paths, &tid);
	change_send(e, n > 0 ? n - 1 : 0);
	return true;
}

/* A change to the object at (mnt, d), matched and named by the kernel's objects. */
static __always_inline void change_object(struct file_event *e, struct vfsmount *mnt,
					  struct dentry *d)
{
	if (!(watched_dentry(mnt, d) & FILE_WATCH_WRITE))
		return;
	e->path_source = FILE_PATH_KERNEL;
	if (read_path(mnt, d, e->path, sizeof(e->path), &e->hdr.flags) < 0)
		e->hdr.flags |= VIGIL_F_PARTIAL;
	change_send(e, 0);
}

/* An fd call: the file itself. */
static __always_inline void change_fd(struct file_event *e, long fd)
{
	struct file *f = current_fd_file(fd);
	struct path p = {};

	if (!f || bpf_core_read(&p, sizeof(p), &f->f_path))
		return;
	change_object(e, p.mnt, p.dentry);
}

#define AT_EMPTY_PATH 0x1000

/*
 * A path call given "" and AT_EMPTY_PATH acts on dfd's own object (an
 * O_PATH descriptor of the file, or the cwd): not a name under it, which
 * the caller's string made absolute ("<dfd's path>/") would wrongly be.
 */
static __always_inline bool empty_path_call(__u32 flags, const char *upath)
{
	char first = 0;

	if (!(flags & AT_EMPTY_PATH))
		return false;
	return !upath || (!bpf_probe_read_user(&first, 1, upath) && !first);
}

static __always_inline void change_empty_path(struct file_event *e, long dfd, __u32 seen)
{
	struct task_struct *task;

	if (kernel_view(e, seen))
		return;
	if ((int)dfd != AT_FDCWD) {
		change_fd(e, dfd);
		return;
	}
	task = (struct task_struct *)bpf_get_current_task();
	change_object(e, BPF_CORE_READ(task, fs, pwd.mnt), BPF_CORE_READ(task, fs, pwd.dentry));
}

/*
 * A path call on (dfd, upath): send `e` when the path is watched for
 * writes.  `at_flags`: the call's AT_* flags, for AT_EMPTY_PATH (0 for a
 * call that has none).
 */
static __always_inline void change_path(struct file_scratch *s, struct file_event *e, long dfd,
					const char *upath, __u32 at_flags, __u32 seen)
{
	if (empty_path_call(at_flags, upath)) {
		change_empty_path(e, dfd, seen);
		return;
	}
	if (kernel_view(e, seen))
		return;
	if (!watched_caller_path(s, dfd, upath, FILE_WATCH_WRITE, &e->hdr.flags))
		return;
	e->path_source = FILE_PATH_CALLER;
	bpf_probe_read_kernel(e->path, sizeof(e->path), s->caller.path);
	change_send(e, 0);
}

static __always_inline void rename(struct file_scratch *s, long ret, enum vigil_syscall sc,
				   long odfd, const char *old, long ndfd, const char *new,
				   __u32 flags, __u32 seen)
{
	struct file_event *e = change_start(s, ret, FILE_OP_RENAME, sc);
	bool hit;

	e->call_flags = flags;
	if (kernel_view(e, seen))
		return;
	e->path_source = FILE_PATH_CALLER;
	hit = watched_caller_path(s, odfd, old, FILE_WATCH_WRITE, &e->hdr.flags);
	bpf_probe_read_kernel(e->path, sizeof(e->path), s->caller.path);
	hit |= watched_caller_path(s, ndfd, new, FILE_WATCH_WRITE, &e->hdr.flags);
	bpf_probe_read_kernel(e->path2, sizeof(e->path2), s->caller.path);
	if (hit)
		change_send(e, s->caller.len);
}

#define ARG1 PT_REGS_PARM1_CORE_SYSCALL(regs)
#define ARG2 PT_REGS_PARM2_CORE_SYSCALL(regs)
#define ARG3 PT_REGS_PARM3_CORE_SYSCALL(regs)
#define ARG4 PT_REGS_PARM4_CORE_SYSCALL(regs)
#define ARG5 PT_REGS_PARM5_CORE_SYSCALL(regs)

static __always_inline int change_exit(long ret, enum vigil_syscall sc)
{
	struct pt_regs *regs = user_regs();
	struct file_scratch *s = scratch();
	__u32 seen = take_lsm_seen();
	struct file_event *e;

	if (!regs || !s)
		return 0;
	switch (sc) {
	case VIGIL_SYS_renameat2:
		rename(s, ret, sc, ARG1, (const char *)ARG2, ARG3, (const char *)ARG4, ARG5, seen);
		break;
	case VIGIL_SYS_unlinkat:
		e = change_start(s, ret, FILE_OP_UNLINK, sc);
		e->call_flags = ARG3;
		change_path(s, e, ARG1, (const char *)ARG2, 0, seen);
		break;
	case VIGIL_SYS_fchmodat:
		e = change_start(s, ret, FILE_OP_CHMOD, sc);
		e->mode = ARG3;
		change_path(s, e, ARG1, (const char *)ARG2, 0, seen);
		break;
	case VIGIL_SYS_fchmodat2:	/* 6.6: fchmodat with flags */
		e = change_start(s, ret, FILE_OP_CHMOD, sc);
		e->mode = ARG3;
		e->call_flags = ARG4;
		change_path(s, e, ARG1, (const char *)ARG2, ARG4, seen);
		break;
	case VIGIL_SYS_fchmod:
		e = change_start(s, ret, FILE_OP_CHMOD, sc);
		e->mode = ARG2;
		change_fd(e, ARG1);
		break;
	case VIGIL_SYS_fchownat:
		e = change_start(s, ret, FILE_OP_CHOWN, sc);
		e->owner_uid = ARG3;
		e->owner_gid = ARG4;
		e->call_flags = ARG5;
		change_path(s, e, ARG1, (const char *)ARG2, ARG5, seen);
		break;
	case VIGIL_SYS_fchown:
		e = change_start(s, ret, FILE_OP_CHOWN, sc);
		e->owner_uid = ARG2;
		e->owner_gid = ARG3;
		change_fd(e, ARG1);
		break;
	case VIGIL_SYS_truncate:
		e = change_start(s, ret, FILE_OP_TRUNCATE, sc);
		e->length = ARG2;
		change_path(s, e, AT_FDCWD, (const char *)ARG1, 0, seen);
		break;
	case VIGIL_SYS_ftruncate:
		e = change_start(s, ret, FILE_OP_TRUNCATE, sc);
		e->length = ARG2;
		change_fd(e, ARG1);
		break;
#ifdef __TARGET_ARCH_x86
	case VIGIL_SYS_rename:
		rename(s, ret, sc, AT_FDCWD, (const char *)ARG1, AT_FDCWD, (const char *)ARG2, 0, seen);
		break;
	case VIGIL_SYS_renameat:
		rename(s, ret, sc, ARG1, (const char *)ARG2, ARG3, (const char *)ARG4, 0, seen);
		break;
	case VIGIL_SYS_unlink:
		e = change_start(s, ret, FILE_OP_UNLINK, sc);
		change_path(s, e, AT_FDCWD, (const char *)ARG1, 0, seen);
		break;
	case VIGIL_SYS_chmod:
		e = change_start(s, ret, FILE_OP_CHMOD, sc);
		e->mode = ARG2;
		change_path(s, e, AT_FDCWD, (const char *)ARG1, 0, seen);
		break;
	case VIGIL_SYS_chown:
	case VIGIL_SYS_lchown:
		e = change_start(s, ret, FILE_OP_CHOWN, sc);
		e->owner_uid = ARG2;
		e->owner_gid = ARG3;
		change_path(s, e, AT_FDCWD, (const char *)ARG1, 0, seen);
		break;
#endif
	default:
		break;
	}
	return 0;
}

#define CHANGE_EXIT(name)						\
	SEC("tracepoint/syscalls/sys_exit_" #name)			\
	int file_##name##_exit(struct trace_event_raw_sys_exit *ctx)	\
	{								\
		return change_exit(ctx->ret, VIGIL_SYS_##name);		\
	}

CHANGE_EXIT(renameat2)
CHANGE_EXIT(unlinkat)
CHANGE_EXIT(fchmodat)
CHANGE_EXIT(fchmodat2)
CHANGE_EXIT(fchmod)
CHANGE_EXIT(fchownat)
CHANGE_EXIT(fchown)
CHANGE_EXIT(truncate)
CHANGE_EXIT(ftruncate)
#ifdef __TARGET_ARCH_x86
CHANGE_EXIT(rename)
CHANGE_EXIT(renameat)
CHANGE_EXIT(unlink)
CHANGE_EXIT(chmod)
CHANGE_EXIT(chown)
CHANGE_EXIT(lchown)
#endif
