/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_LIFECYCLE_H
#define __VIGIL_LIFECYCLE_H

#include "vigil.h"

/* A new process (threads are not reported).  The header is the parent. */
struct fork_event {
	struct vigil_header hdr;
	__u32 child_pid;
	__u32 __pad;
	__u64 child_start_time;	/* the child's start, CLOCK_BOOTTIME ns (its process key) */
};

/* The last thread of a process exited.  The header is the process. */
struct exit_event {
	struct vigil_header hdr;
	__s32 exit_code;	/* exit status, 0..255 */
	__u32 signal;		/* terminating signal, 0 when none */
	__u64 duration_ns;	/* process lifetime */
};

#endif /* __VIGIL_LIFECYCLE_H */
