/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_FILE_H
#define __VIGIL_FILE_H

#include "vigil.h"
#include "syscalls.h"	/* enum vigil_syscall */

#define FILE_PATH_SIZE	512	/* reported paths; a longer one keeps its leaf end */
#define FILE_KEY_SIZE	256	/* LPM_DATA_SIZE_MAX: the longest path matched as a string */
#define FILE_NAME_SIZE	64	/* a watched name (leaf) within a watched directory */

/* What a watch-list entry asks to see (bits of watch values). */
enum file_watch_access {
	FILE_WATCH_READ = 1 << 0,	/* opens for reading */
	FILE_WATCH_WRITE = 1 << 1,	/* opens for write/create/truncate; rename, unlink, chmod... */
};

/* How a watched directory's entries are matched (bits of file_dir_value.how). */
enum file_dir_how {
	FILE_DIR_ALL = 1 << 0,		/* every entry: a watched tree */
	FILE_DIR_NAMED = 1 << 1,	/* only names in file_names (exact or prefix) */
};

/* Where a reported path comes from. */
enum file_path_source {
	FILE_PATH_KERNEL = 0,	/* resolved by the kernel: the opened struct file */
	FILE_PATH_CALLER = 1,	/* as passed by the caller, read at syscall exit, made
				 * absolute against its cwd or dirfd (a failed open,
				 * a path operation) */
};

enum file_op {
	FILE_OP_RENAME = 1,
	FILE_OP_UNLINK = 2,
	FILE_OP_CHMOD = 3,
	FILE_OP_CHOWN = 4,
	FILE_OP_TRUNCATE = 5,
};

/* Key of the watched directories (and of procfs, dev = ino = 0). */
struct file_dir_key {
	__u32 dev;		/* the kernel's s_dev (MKDEV: major << 20 | minor) */
	__u32 __pad;
	__u64 ino;
};

struct file_dir_value {
	__u32 how;		/* enum file_dir_how bits */
	__u32 access;		/* enum file_watch_access bits, for FILE_DIR_ALL */
};

/* LPM key: a watched directory's inode, then a name (exact: with its NUL). */
struct file_name_key {
	__u32 prefixlen;	/* bits: 96 (dev, ino) + 8 per name byte */
	__u32 dev;		/* 4-byte fields only: no padding inside the matched bytes */
	__u32 ino_lo;
	__u32 ino_hi;
	char name[FILE_NAME_SIZE];
};

/* LPM key: an absolute path string (a prefix, or exact with its NUL). */
struct file_path_key {
	__u32 prefixlen;
	char path[FILE_KEY_SIZE];
};

/* Where an open was seen; user space shows the names. */
enum open_hook {
	OPEN_HOOK_RETURN = 0,	/* the open call's return: ret is the fd or -errno */
	OPEN_HOOK_LSM = 1,	/* the kernel's file_open check, inside every open
				 * (syscalls, io_uring, open_by_handle_at): allowed,
				 * ret 0, before an fd exists */
};

/*
 * One open of a watched path (or a failed attempt at one), reported at
 * the syscall's return, or from the file_open LSM hook where the kernel
 * has it (failures then still at the return).  The header is the caller.
 */
struct open_event {
	struct vigil_header hdr;
	__s32 ret;			/* the new fd, or -errno (0 from the LSM hook) */
	__u32 open_flags;		/* O_* as the kernel took them */
	__u32 mode;			/* creation mode (O_CREAT) */
	__u32 access;			/* enum file_watch_access: what this open does */
	enum vigil_syscall syscall;	/* the call in progress: open, openat, openat2,
					 * creat; from the LSM hook also io_uring_enter,
					 * open_by_handle_at, ... (-1: a kernel thread) */
	enum file_path_source path_source;
	__u64 ino;			/* the opened inode (0 for a failed open) */
	__u32 dev;			/* its filesystem (kernel s_dev) */
	enum open_hook hook;
	char path[FILE_PATH_SIZE];
};

/*
 * A change to a watched path: rename (either end watched), unlink,
 * chmod, chown, truncate; at the syscall's return, with its result.
 */
struct file_event {
	struct vigil_header hdr;
	__s32 ret;			/* 0, or -errno */
	enum file_op op;
	enum vigil_syscall syscall;
	enum file_path_source path_source;
	__u32 mode;			/* chmod */
	__u32 owner_uid;		/* chown (-1: unchanged) */
	__u32 owner_gid;
	__u32 call_flags;		/* renameat2 RENAME_*, unlinkat AT_REMOVEDIR, ... */
	__s64 length;			/* truncate */
	char path[FILE_PATH_SIZE];	/* rename: the source */
	char path2[FILE_PATH_SIZE];	/* rename: the destination */
};

#endif /* __VIGIL_FILE_H */
