/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_MOUNT_H
#define __VIGIL_MOUNT_H

#include "vigil.h"

#define MOUNT_FSTYPE_SIZE	64
#define MOUNT_PATH_SIZE		256

/* Which call; user space shows mount, umount, fsmount, move_mount. */
enum mount_op {
	MOUNT_OP_MOUNT = 0,		/* mount(2) */
	MOUNT_OP_UMOUNT = 1,		/* umount2(2) */
	MOUNT_OP_FSMOUNT = 2,		/* fsmount(2): a detached mount from an fs context */
	MOUNT_OP_MOVE_MOUNT = 3,	/* move_mount(2): attach or move a mount */
};

/* Where source, target and fstype were read. */
enum mount_strings {
	MOUNT_STRINGS_CALLER = 0,	/* the caller's memory at syscall exit: as passed */
	MOUNT_STRINGS_KERNEL = 1,	/* the kernel's own copies (LSM hook, fs context) */
};

/*
 * One mount-changing call, reported at its return.  The header is the
 * caller at entry.  Empty strings mean "not given" (NULL, or not a field
 * of that call); a string that could not be read sets PARTIAL.
 */
struct mount_event {
	struct vigil_header hdr;
	__s32 ret;			/* 0 (fsmount: the new mount's fd), or -errno */
	enum mount_op op;
	enum mount_strings strings;
	__s32 from_fd;			/* fsmount: the fs context fd; move_mount: from_dfd */
	__s32 to_fd;			/* move_mount: to_dfd (-100 is AT_FDCWD) */
	__u32 attr_flags;		/* fsmount: MOUNT_ATTR_* */
	char fstype[MOUNT_FSTYPE_SIZE];	/* mount, fsmount */
	char source[MOUNT_PATH_SIZE];	/* device or source path; move_mount: from_pathname */
	char target[MOUNT_PATH_SIZE];	/* mount point; move_mount: to_pathname */
	__u64 mount_flags;		/* the call's flags argument (MS_*, MNT_*, MOVE_MOUNT_*) */
};

#endif /* __VIGIL_MOUNT_H */
