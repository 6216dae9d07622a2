/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_SYSCALL32_H
#define __VIGIL_SYSCALL32_H

#include "vigil.h"
#include "syscalls.h"	/* generated: enum vigil_syscall, enum vigil_syscall_ia32 */

/* Which table the call went through; user space shows ia32, x32. */
enum syscall32_abi {
	SYSCALL32_ABI_IA32 = 0,	/* int $0x80, sysenter or syscall in 32-bit mode: the ia32 table */
	SYSCALL32_ABI_X32 = 1,	/* x32: the 64-bit entry, number with __X32_SYSCALL_BIT */
};

/*
 * A syscall the syscalls:* tracepoints do not fire for.  On x86_64 the
 * kernel skips them for every 32-bit call (arch_trace_is_compat_syscall):
 * int $0x80 works from any 64-bit process, so a sensor built on those
 * tracepoints (opens, file changes, kill, setuid, mount...) can be evaded
 * by one instruction where no LSM hook or fentry backs it.  This record
 * makes the evasion itself visible: one per process image (pid, start
 * time, exec count), table and number, the first call of each, with its
 * result.  `mode32` tells a 32-bit program (whose every call comes this
 * way, legitimately) from a 64-bit one reaching for the 32-bit table.
 */
struct syscall32_event {
	struct vigil_header hdr;
	__s64 ret;			/* the call's return: >= 0, or -errno */
	/* the arguments, as the call passed them: ia32 bx, cx, dx, si, di,
	 * bp (32 bits each); x32 di, si, dx, r10, r8, r9 */
	__u64 arg0;
	__u64 arg1;
	__u64 arg2;
	__u64 arg3;
	__u64 arg4;
	__u64 arg5;
	__s32 nr;			/* the number in its table (x32: without the x32 bit) */
	enum syscall32_abi abi;
	enum vigil_syscall_ia32 ia32_syscall;	/* abi ia32: nr named by the ia32 table */
	enum vigil_syscall x32_syscall;		/* abi x32: nr named by x86_64's table */
	__u8 mode32;			/* 1: the process image is a 32-bit (i386) program
					 * (its exec set it up so); not the code segment,
					 * which a 64-bit program can switch itself */
	__u8 __pad[7];
};

#endif /* __VIGIL_SYSCALL32_H */
