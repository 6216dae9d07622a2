/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_SIGNAL_H
#define __VIGIL_SIGNAL_H

#include "vigil.h"

/* Which call sent the signal. */
enum kill_syscall {
	KILL_SYSCALL_KILL = 0,
	KILL_SYSCALL_TKILL = 1,
	KILL_SYSCALL_TGKILL = 2,
	KILL_SYSCALL_PIDFD_SEND_SIGNAL = 3,
	KILL_SYSCALL_RT_SIGQUEUEINFO = 4,	/* kill with a forged siginfo */
	KILL_SYSCALL_RT_TGSIGQUEUEINFO = 5,
};

/* How target_pid was found. */
enum target_source {
	TARGET_SOURCE_NONE = 0,		/* no single process: a group (pid 0, -1, -pgid), or unknown */
	TARGET_SOURCE_ARGUMENT = 1,	/* the pid passed, by a caller in the host's pid namespace */
	TARGET_SOURCE_KERNEL = 2,	/* the task the kernel acted on (pidfd, LSM hook) */
};

/*
 * One signal sent by kill(2), tkill(2), tgkill(2), pidfd_send_signal(2),
 * rt_sigqueueinfo(2) or rt_tgsigqueueinfo(2),
 * reported at the call's return.  The header is the sender.  `target_pid`
 * is a host pid (user space adds the target's exe and comm), 0 when the
 * call named no single process or named it in another pid namespace;
 * `target_arg` is the pid as passed.
 */
struct kill_event {
	struct vigil_header hdr;
	__s32 ret;			/* 0, or -errno */
	__s32 sig;			/* 0: a permission/existence probe, nothing sent */
	__s32 target_arg;		/* kill, rt_*: pid/tgid; tkill: tid; tgkill: tgid; pidfd: the fd */
	__s32 target_tid;		/* tkill, tgkill, rt_tgsigqueueinfo: the thread; 0 otherwise */
	__u32 target_pid;		/* host pid of the target process, 0 when none */
	enum target_source target_source;
	enum kill_syscall syscall;
	__u32 __pad;
};

/* ptrace requests reported; others (PEEK*, GETREGS, CONT...) are not. */
enum ptrace_request {
	PTRACE_REQUEST_TRACEME = 0,
	PTRACE_REQUEST_POKETEXT = 4,
	PTRACE_REQUEST_POKEDATA = 5,
	PTRACE_REQUEST_POKEUSER = 6,
	PTRACE_REQUEST_SETREGS = 13,
	PTRACE_REQUEST_SETFPREGS = 15,
	PTRACE_REQUEST_ATTACH = 16,
	PTRACE_REQUEST_SETREGSET = 0x4205,
	PTRACE_REQUEST_SEIZE = 0x4206,
};

/*
 * One ptrace(2) call that takes control of a process or writes into it,
 * reported at its return.  The header is the tracer (for TRACEME, the
 * tracee; target_pid is then its parent).
 */
struct ptrace_event {
	struct vigil_header hdr;
	__s32 ret;			/* 0, or -errno */
	enum ptrace_request request;
	__s32 target_arg;		/* the pid as passed */
	__u32 target_pid;		/* host pid of the tracee, 0 when unknown */
	enum target_source target_source;
	__u32 __pad;
	__u64 addr;			/* POKE*: the address written */
	__u64 data;			/* POKE*: the word written; SEIZE: options */
};

#endif /* __VIGIL_SIGNAL_H */
