/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_EXEC_H
#define __VIGIL_EXEC_H

#include "vigil.h"

/*
 * Bounds on what one exec record carries.  ARGS_SIZE must be a power of
 * two: the BPF side masks offsets with it to satisfy the verifier.
 */
#define EXEC_ARGS_MAX	256	/* argv entries read */
#define EXEC_ARGS_SIZE	8192	/* bytes of argv kept, NULs included */
#define EXEC_PATH_SIZE	512

/*
 * One exec, successful or not.  `args` holds argc NUL-terminated strings
 * back to back; the ring record ends after `args_size` bytes of it, so
 * the record is shorter than the struct.
 */
struct exec_event {
	struct vigil_header hdr;
	__s32 ret;		/* 0, or -errno of a failed exec */
	__u32 argc;		/* strings in args */
	__u32 args_size;	/* bytes used in args */
	__u32 euid;		/* effective ids after the exec (setuid) */
	__u32 egid;
	__u32 auid;		/* login uid, (u32)-1 when unset */
	__u32 syscall_nr;	/* 0 execve, 1 execveat */
	__u32 __pad;
	char filename[EXEC_PATH_SIZE];	/* resolved by the kernel on success */
	char args[EXEC_ARGS_SIZE];
};

#endif /* __VIGIL_EXEC_H */
