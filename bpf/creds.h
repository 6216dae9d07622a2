/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_CREDS_H
#define __VIGIL_CREDS_H

#include "vigil.h"

enum setuid_syscall {
	SETUID_SYSCALL_SETUID = 0,
	SETUID_SYSCALL_SETREUID = 1,
	SETUID_SYSCALL_SETRESUID = 2,
	SETUID_SYSCALL_SETFSUID = 3,
};

enum setgid_syscall {
	SETGID_SYSCALL_SETGID = 0,
	SETGID_SYSCALL_SETREGID = 1,
	SETGID_SYSCALL_SETRESGID = 2,
	SETGID_SYSCALL_SETFSGID = 3,
};

/*
 * One setuid(2), setreuid(2), setresuid(2) or setfsuid(2), reported at its
 * return: the ids before (at entry) and after (at exit, the task's
 * credentials), and the result.  arg0..arg2 are the arguments as passed
 * (-1: "leave unchanged"; setuid/setfsuid have one).  setfsuid returns
 * the previous fsuid, not an error: compare old/new to see what changed.
 */
struct setuid_event {
	struct vigil_header hdr;
	__s32 ret;
	enum setuid_syscall syscall;
	__s32 arg0;
	__s32 arg1;
	__s32 arg2;
	__u32 old_uid;
	__u32 old_euid;
	__u32 old_suid;
	__u32 old_fsuid;
	__u32 new_uid;
	__u32 new_euid;
	__u32 new_suid;
	__u32 new_fsuid;
	__u32 __pad;
};

/* The same for the group ids: setgid, setregid, setresgid, setfsgid. */
struct setgid_event {
	struct vigil_header hdr;
	__s32 ret;
	enum setgid_syscall syscall;
	__s32 arg0;
	__s32 arg1;
	__s32 arg2;
	__u32 old_gid;
	__u32 old_egid;
	__u32 old_sgid;
	__u32 old_fsgid;
	__u32 new_gid;
	__u32 new_egid;
	__u32 new_sgid;
	__u32 new_fsgid;
	__u32 __pad;
};

/*
 * One capset(2): the task's capability sets before and after (bit N is
 * capability N), and the result.  `target_pid` is the header pid passed
 * (0: itself; the kernel refuses any other).
 */
struct capset_event {
	struct vigil_header hdr;
	__s32 ret;
	__s32 target_pid;
	__u64 old_effective;
	__u64 old_permitted;
	__u64 old_inheritable;
	__u64 new_effective;
	__u64 new_permitted;
	__u64 new_inheritable;
};

#endif /* __VIGIL_CREDS_H */
