/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_CAPABLE_H
#define __VIGIL_CAPABLE_H

#include "vigil.h"
#include "syscalls.h"	/* generated: enum vigil_syscall */

/* What commoncap decided; user space shows "allowed" / "denied". */
enum capable_verdict {
	CAPABLE_VERDICT_ALLOWED = 0,
	CAPABLE_VERDICT_DENIED = 1,
};

/*
 * Whether the kernel would write an audit record for a denial of this check
 * (bcc's AUDIT column).  Only the function's `opts` argument says so
 * (CAP_OPT_NOAUDIT: ns_capable_noaudit(), has_capability_noaudit()...);
 * the capability:cap_capable tracepoint does not carry it: "unknown".
 */
enum capable_audit {
	CAPABLE_AUDIT_NO = 0,
	CAPABLE_AUDIT_YES = 1,
	CAPABLE_AUDIT_UNKNOWN = 2,
};

#define CAPABLE_EXE_SIZE	512

/*
 * One capability check by commoncap's cap_capable(), the answer of the
 * capability LSM (another LSM may still refuse what it allowed).  The
 * header is the task making the check.  The credentials checked are
 * usually that task's own; `other_cred` is 1 when they are not (a check
 * on another task, has_capability(); a file opener's, file_ns_capable();
 * creds overridden by a kernel service...): then pid/comm name the checker,
 * not the holder.
 *
 * `exe` is set only for a check made inside execve(): the kernel switches
 * comm and mm->exe_file together (begin_new_exec) long before the exec
 * event that updates user space's process table, so only the record
 * itself can say which program made the check.  It is mm->exe_file's path
 * at the check (the old program before the point of no return, the new
 * one after), as exec_event's exe.  Absent otherwise: the record ends
 * before it, and the process table supplies exe.
 */
struct capable_event {
	struct vigil_header hdr;
	__s32 cap;			/* CAP_* number, include/uapi/linux/capability.h */
	__s32 ret;			/* 0, or -EPERM */
	enum capable_verdict verdict;	/* from ret */
	enum capable_audit audit;
	__u32 target_ns_inum;		/* user ns the check is against (its /proc/.../ns/user inode) */
	__u32 cred_ns_inum;		/* user ns of the checked credentials */
	__u8 init_ns;			/* 1: checked against the initial user ns (the host) */
	__u8 other_cred;		/* 1: credentials checked are not the task's own */
	__u8 __pad[6];
	/*
	 * The syscall the task is in (its saved registers, as seccomp and
	 * audit read them), -1 for a kernel thread: tells a mount's
	 * CAP_SYS_ADMIN (mount) from the memory-accounting check every
	 * exec makes (execve, mmap, brk).  `syscall` is the same number,
	 * decoded to its name from this enum.
	 */
	__s32 syscall_nr;
	enum vigil_syscall syscall;
	char exe[CAPABLE_EXE_SIZE];	/* last: only in execve, cut after its NUL */
};

#endif /* __VIGIL_CAPABLE_H */
