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

/* Which call; user space shows the names (execve, execveat, unknown). */
enum exec_syscall {
	EXEC_SYSCALL_EXECVE = 0,
	EXEC_SYSCALL_EXECVEAT = 1,
	EXEC_SYSCALL_UNKNOWN = 2,
};

/*
 * What the new image runs (mm->exe_file), as the kernel knows it: no
 * string matching in user space.  User space shows the names.
 */
enum exec_exe_kind {
	EXEC_EXE_NONE = 0,	/* failed exec, or exe_file unreadable */
	EXEC_EXE_FILE = 1,	/* a file with at least one link */
	EXEC_EXE_DELETED = 2,	/* i_nlink == 0: no name left on any filesystem */
	EXEC_EXE_MEMFD = 3,	/* memfd_create() file (shmem/hugetlbfs, "memfd:<name>") */
};

/*
 * One exec, successful or not.  `args` holds argc NUL-terminated strings
 * back to back; the ring record ends after `args_size` bytes of it, so
 * the record is shorter than the struct: `args` must stay the last member.
 *
 * For a successful exec `args` is the kernel's copy: the new image's
 * mm->arg_start..arg_end read at sched_process_exec (pages present, no
 * old thread left to rewrite them).  For a failed exec it is read from
 * the caller's memory at sys_exit, and hdr.flags has VIGIL_F_CALLER_ARGS.
 *
 * `filename` is what the caller asked for (relative, via symlinks...);
 * `exe` is the file the new image runs, the absolute path of
 * mm->exe_file as /proc/<pid>/exe shows it: for a script, the interpreter;
 * " (deleted)" appended when unlinked (memfd included).  It is relative to
 * the task's mount namespace root (a chroot is not stripped).  A path cut
 * at its bound keeps the leaf end and has no leading '/' (and hdr.flags has
 * VIGIL_F_TRUNCATED).  Empty for a failed exec: nothing was executed.
 */
struct exec_event {
	struct vigil_header hdr;
	__s32 ret;		/* 0, or -errno of a failed exec */
	__u32 argc;		/* strings in args */
	__u32 args_size;	/* bytes used in args */
	__u32 euid;		/* effective ids after the exec (setuid) */
	__u32 egid;
	__u32 auid;		/* login uid, (u32)-1 when unset */
	enum exec_syscall syscall;	/* 4 bytes, like any C enum here */
	enum exec_exe_kind exe_kind;
	char filename[EXEC_PATH_SIZE];	/* resolved by the kernel on success */
	char exe[EXEC_PATH_SIZE];	/* absolute path of the executable */
	/*
	 * The file the exec opened, resolved by the kernel at its first
	 * bprm_check_security (BPF-LSM kernels only, else empty): for a "#!"
	 * script the script itself (exe is then its interpreter); for an exec
	 * that failed after opening its file (ENOEXEC, a missing interpreter)
	 * the file it tried.  Same form as exe.
	 */
	char file[EXEC_PATH_SIZE];
	char args[EXEC_ARGS_SIZE];	/* last: cut short in the ring */
};

#endif /* __VIGIL_EXEC_H */
