/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * The record header every Vigil event starts with, and the numbers both
 * sides agree on.  User space reads all of this from the object's BTF
 * (struct layouts, the enums below): nothing here is mirrored by hand.
 */
#ifndef __VIGIL_H
#define __VIGIL_H

#define VIGIL_COMM_LEN 16

/*
 * Event kinds.  Numbers are stored in databases and sent across a fleet:
 * never renumber or reuse one.  User space maps VIGIL_EV_<NAME> to the
 * record struct `<name>_event` declared in the sensor's header.
 */
enum vigil_event_kind {
	VIGIL_EV_EXEC = 1,
	VIGIL_EV_FORK = 2,
	VIGIL_EV_EXIT = 3,
	VIGIL_EV_CAPABLE = 4,
	VIGIL_EV_CONNECT = 5,
	VIGIL_EV_ACCEPT = 6,
	VIGIL_EV_RETRANSMIT = 7,
	VIGIL_EV_BIND = 8,
	VIGIL_EV_LISTEN = 9,
	VIGIL_EV_BASHREADLINE = 10,
	VIGIL_EV_OPEN = 11,
	/* 26-30: reserved for the file access sensor */
	VIGIL_EV_MODULE_LOAD = 12,
	VIGIL_EV_MOUNT = 13,
	VIGIL_EV_KILL = 14,
	VIGIL_EV_PTRACE = 15,
	VIGIL_EV_SETUID = 16,
	VIGIL_EV_SETGID = 17,
	VIGIL_EV_CAPSET = 18,
	VIGIL_EV_BPF = 19,
	VIGIL_EV_MEMFD = 20,
	VIGIL_EV_SYSCALL32 = 21,	/* a 32-bit syscall (past the syscall tracepoints) */
	VIGIL_EV_FILE = 25,	/* rename, unlink, chmod, chown, truncate (op) */
};

/* Bits of vigil_header.flags; user space reads the names from BTF. */
enum vigil_flag {
	VIGIL_F_TRUNCATED = 1 << 0,	/* a variable-length field was cut at its bound */
	VIGIL_F_PARTIAL = 1 << 1,	/* part of the record could not be captured */
	VIGIL_F_CALLER_ARGS = 1 << 2,	/* exec: argv/filename as the caller passed them, not the kernel's copy */
};

/*
 * Counters each object keeps per event kind, in its per-CPU `vigil_stats`
 * array at index kind * VIGIL_STAT_MAX + stat.
 */
enum vigil_stat {
	VIGIL_STAT_EMITTED = 0,		/* records written to the ring */
	VIGIL_STAT_LOST = 1,		/* records dropped: ring buffer full */
	VIGIL_STAT_PARTIAL = 2,		/* records sent without some data */
	VIGIL_STAT_MAX = 4,
};

#define VIGIL_KIND_MAX 64

/*
 * Common header.  Names follow user space: `pid` is the process (the
 * kernel's tgid), `tid` the thread (the kernel's pid).  Explicit padding,
 * no `packed`: the layout is the same for clang and for BTF readers.
 */
struct vigil_header {
	__u32 kind;		/* enum vigil_event_kind */
	__u32 flags;		/* enum vigil_flag bits */
	__u64 ts_ns;		/* CLOCK_BOOTTIME, ns (user space adds the epoch) */
	__u32 pid;
	__u32 tid;
	__u32 ppid;		/* real parent's pid */
	__u32 uid;
	__u32 gid;
	__u32 cpu;		/* CPU that queued the record: `seq` counts per CPU */
	__u64 cgroup_id;	/* cgroup v2 id of the task */
	/*
	 * The record's number in its CPU's sequence, taken when it is queued
	 * (a record the ring could not take burns its number: a gap is a loss).
	 * The counters start at CLOCK_BOOTTIME ns when the agent loads, so no
	 * two runs of one boot reuse a number: (boot_id, cpu, seq) is unique.
	 */
	__u64 seq;
	/* process start, CLOCK_BOOTTIME ns: with boot_id and pid, the process key */
	__u64 start_time;
	__u64 parent_start_time;	/* the same for the real parent (ppid) */
	char comm[VIGIL_COMM_LEN];
};

#endif /* __VIGIL_H */
