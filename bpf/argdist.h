/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * argdist: in-kernel counts and log2 histograms of probe arguments, from
 * one precompiled program configured before load (no compiler at run
 * time).  User space (src/vigil/argdist) turns a bcc-like spec into the
 * `.rodata` configuration below: which value each key is read from (a
 * tracepoint field at an offset taken from tracefs, a uprobe argument
 * register, a USDT argument, the current task's pid/comm/...), how wide
 * and signed it is, and the in-kernel filters.  The kernel fills a
 * `struct argdist_key` per event and counts it in a hash map that user
 * space reads and clears each interval.  Layouts reach Python through BTF.
 */
#ifndef __ARGDIST_H
#define __ARGDIST_H

#define ARGDIST_MAX_KEYS 4	/* expressions per spec (keys + histogram value) */
#define ARGDIST_MAX_FILTERS 4	/* filters joined by && */
#define ARGDIST_FILTER_LEN 32	/* filter string constants */
#define ARGDIST_COMM_LEN 16	/* TASK_COMM_LEN: string keys of the comm-sized key */
#define ARGDIST_STR_LEN 64	/* string keys of the long key: longer strings are cut */
#define ARGDIST_MAX_SLOTS 64	/* log2 slots: slot i holds [2^i, 2^(i+1)), slot 0 also 0 */

/* Where a value comes from. */
enum argdist_source {
	ARGDIST_SRC_NONE = 0,
	ARGDIST_SRC_FIELD = 1,		/* tracepoint: integer of `size` bytes at `index` */
	ARGDIST_SRC_FIELD_CHARS = 2,	/* tracepoint: char[size] at `index` */
	ARGDIST_SRC_FIELD_DATALOC = 3,	/* tracepoint: __data_loc char[] (u32 loc at `index`) */
	ARGDIST_SRC_FIELD_RELLOC = 4,	/* tracepoint: __rel_loc char[] (offset from the field's end) */
	ARGDIST_SRC_ARG = 5,		/* uprobe/kprobe: argument `index` (1..6) from pt_regs */
	ARGDIST_SRC_RETVAL = 6,		/* uretprobe/kretprobe: the return value */
	ARGDIST_SRC_USDT_ARG = 7,	/* USDT: argument `index` (1..12), libbpf's bpf_usdt_arg */
	ARGDIST_SRC_PID = 8,		/* current process (tgid) */
	ARGDIST_SRC_TID = 9,
	ARGDIST_SRC_UID = 10,
	ARGDIST_SRC_GID = 11,
	ARGDIST_SRC_PPID = 12,		/* real parent's tgid */
	ARGDIST_SRC_CGROUP = 13,	/* cgroup v2 id */
	ARGDIST_SRC_CPU = 14,
	ARGDIST_SRC_COMM = 15,		/* current task's comm */
	ARGDIST_SRC_PCOMM = 16,		/* real parent's comm */
};

enum argdist_flag {
	ARGDIST_F_READ_SIGNED = 1 << 0,	/* the field read is signed: sign-extend from `size` */
	ARGDIST_F_SIGNED = 1 << 1,	/* the spec's type is signed: sign-extend from `cast` */
	ARGDIST_F_STRING = 1 << 2,	/* a string key (goes to s<i> of the key) */
	ARGDIST_F_DEREF = 1 << 3,	/* the number read is a pointer to a C string */
};

/* One expression: a key, the histogram value or a filter's left side. */
struct argdist_expr {
	__u32 source;	/* enum argdist_source */
	__u32 index;	/* tracepoint field offset, or argument number */
	__u32 size;	/* bytes of the tracepoint field */
	__u32 cast;	/* bytes of the spec's type (1, 2, 4, 8): the value is cut to it */
	__u32 flags;	/* enum argdist_flag */
	__u32 __pad;
	__u64 div;	/* divide by this before the cast (bitehist: bytes/1024); 0: none */
};

enum argdist_op {
	ARGDIST_OP_EQ = 1,
	ARGDIST_OP_NE = 2,
	ARGDIST_OP_LT = 3,
	ARGDIST_OP_LE = 4,
	ARGDIST_OP_GT = 5,
	ARGDIST_OP_GE = 6,
};

struct argdist_filter {
	struct argdist_expr expr;
	__u32 op;		/* enum argdist_op; strings: == and != only */
	__u32 __pad;
	__s64 value;		/* numbers (compared signed when the type is) */
	char str[ARGDIST_FILTER_LEN];	/* strings */
};

/*
 * Which hash key a spec uses: the smallest that holds its keys.  Hashing
 * the key is most of the cost of counting an event (40 bytes: ~20 ns,
 * 168 bytes: ~65 ns), so numbers-only specs do not pay for string room.
 */
enum argdist_key_kind {
	ARGDIST_KEY_NUM = 0,	/* struct argdist_nkey in map ncounts */
	ARGDIST_KEY_COMM = 1,	/* struct argdist_ckey in map ccounts: strings <= 15 bytes */
	ARGDIST_KEY_LONG = 2,	/* struct argdist_key in map counts: strings <= 63 bytes */
};

/*
 * The hash keys.  Expression i of the spec is v<i> (numbers, sign-extended
 * to 64 bits when signed) or s<i> (strings); unused ones stay zero.
 * With a histogram the value's log2 slot is part of the key: one code path
 * and one map for counts and histograms.
 */
struct argdist_nkey {
	__u64 v0;
	__u64 v1;
	__u64 v2;
	__u64 v3;
	__u32 slot;
	__u32 __pad;
};

struct argdist_ckey {
	__u64 v0;
	__u64 v1;
	__u64 v2;
	__u64 v3;
	char s0[ARGDIST_COMM_LEN];
	char s1[ARGDIST_COMM_LEN];
	char s2[ARGDIST_COMM_LEN];
	char s3[ARGDIST_COMM_LEN];
	__u32 slot;
	__u32 __pad;
};

struct argdist_key {
	__u64 v0;
	__u64 v1;
	__u64 v2;
	__u64 v3;
	char s0[ARGDIST_STR_LEN];
	char s1[ARGDIST_STR_LEN];
	char s2[ARGDIST_STR_LEN];
	char s3[ARGDIST_STR_LEN];
	__u32 slot;
	__u32 __pad;
};

#endif /* __ARGDIST_H */
