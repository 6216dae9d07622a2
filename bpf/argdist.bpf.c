// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * argdist / bitehist: counts and log2 histograms built in the kernel, from
 * one precompiled program per probe type.  What to read is configured in
 * `.rodata` before load (see argdist.h); the verifier then knows every
 * configuration value as a constant, so it follows only the branches the
 * configuration takes and each helper gets a constant size.  User space
 * opens this object once per spec.
 *
 * Per event: filters (all must pass) -> keys -> (histogram) log2 slot of
 * the value -> one atomic add in the counting map of the spec's key layout
 * (ncounts, ccounts or counts).  User space reads and clears that map once
 * per interval.  Nothing goes through a ring buffer.
 */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/usdt.bpf.h>
#include "vigil.h"
#include "argdist.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by user space before load (enum and struct layouts come from BTF). */
const volatile __u32 nr_keys = 0;
const volatile __u32 nr_filters = 0;
const volatile __u32 histogram = 0;	/* 1: count the log2 slot of `value` per key */
const volatile __u32 key_kind = ARGDIST_KEY_NUM;	/* enum argdist_key_kind */
const volatile struct argdist_expr keys[ARGDIST_MAX_KEYS] = {};
const volatile struct argdist_filter filters[ARGDIST_MAX_FILTERS] = {};
const volatile struct argdist_expr value = {};

/* Never silent: user space reports both. */
__u64 dropped = 0;	/* events not counted: `counts` was full */
__u64 errors = 0;	/* events not counted: a value could not be read */

/*
 * One map per key layout; user space sizes the one key_kind picks (bcc's
 * default: 10240 keys) and shrinks the others to one entry before load.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct argdist_nkey);
	__type(value, __u64);	/* events */
} ncounts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct argdist_ckey);
	__type(value, __u64);
} ccounts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct argdist_key);
	__type(value, __u64);
} counts SEC(".maps");

/* Keep types only reached through casts or rodata in the object's BTF. */
enum argdist_key_kind *__argdist_key_kind __attribute__((unused));
enum argdist_source *__argdist_source __attribute__((unused));
enum argdist_flag *__argdist_flag __attribute__((unused));
enum argdist_op *__argdist_op __attribute__((unused));
/* The layout checks read every object's record kinds; this one has none. */
enum vigil_event_kind *__vigil_enum_kind __attribute__((unused));

/*
 * libbpf before 1.2 has no PT_REGS_PARM6 (Debian 12 ships 1.1): the sixth
 * argument register of the architectures Vigil builds for.
 */
#ifndef PT_REGS_PARM6
#if defined(__TARGET_ARCH_x86)
#define PT_REGS_PARM6(x) (((const struct pt_regs *)(x))->r9)
#elif defined(__TARGET_ARCH_arm64)
#define PT_REGS_PARM6(x) (((const struct user_pt_regs *)(x))->regs[5])
#endif
#endif

/* The program a source is read from: fixed per program at compile time. */
#define PROBE_TP 0
#define PROBE_REGS 1	/* uprobe, uretprobe (and kprobes where the kernel has them) */
#define PROBE_USDT 2

/* libbpf-tools' bits.bpf.h: floor(log2(v)), 0 for 0. */
static __always_inline __u64 log2_u32(__u32 v)
{
	__u32 shift, r;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u64 log2l(__u64 v)
{
	__u32 hi = v >> 32;

	return hi ? log2_u32(hi) + 32 : log2_u32(v);
}

/* Keep the low `bytes` of v, sign-extended when `sign`. */
static __always_inline __u64 cut(__u64 v, __u32 bytes, bool sign)
{
	__u32 shift;

	if (bytes == 0 || bytes >= 8)
		return v;
	shift = 64 - bytes * 8;
	if (sign)
		return (__u64)(((__s64)(v << shift)) >> shift);
	return (v << shift) >> shift;
}

/* A numeric source; -1 when it cannot be read (counted in `errors`). */
static __always_inline int read_raw(void *ctx, const int probe,
				    const volatile struct argdist_expr *e, __u64 *out)
{
	struct task_struct *task;
	__u32 size = e->size;
	__u64 v = 0;
	long arg;

	switch (e->source) {
	case ARGDIST_SRC_FIELD:
		if (probe != PROBE_TP)
			return -1;
		if (size > 8)
			size = 8;
		/* a tracepoint's record is the context: read it at the offset tracefs gave */
		if (bpf_probe_read_kernel(&v, size, (char *)ctx + e->index))
			return -1;
		v = cut(v, size, e->flags & ARGDIST_F_READ_SIGNED);
		break;
	case ARGDIST_SRC_ARG:
		if (probe != PROBE_REGS)
			return -1;
		switch (e->index) {
		case 1: v = PT_REGS_PARM1((struct pt_regs *)ctx); break;
		case 2: v = PT_REGS_PARM2((struct pt_regs *)ctx); break;
		case 3: v = PT_REGS_PARM3((struct pt_regs *)ctx); break;
		case 4: v = PT_REGS_PARM4((struct pt_regs *)ctx); break;
		case 5: v = PT_REGS_PARM5((struct pt_regs *)ctx); break;
		case 6: v = PT_REGS_PARM6((struct pt_regs *)ctx); break;
		default: return -1;
		}
		break;
	case ARGDIST_SRC_RETVAL:
		if (probe != PROBE_REGS)
			return -1;
		v = PT_REGS_RC((struct pt_regs *)ctx);
		break;
	case ARGDIST_SRC_USDT_ARG:
		if (probe != PROBE_USDT)
			return -1;
		/* libbpf decodes the argument's location from the note it attached with */
		if (bpf_usdt_arg(ctx, e->index - 1, &arg))
			return -1;
		v = arg;
		break;
	case ARGDIST_SRC_PID:
		v = bpf_get_current_pid_tgid() >> 32;
		break;
	case ARGDIST_SRC_TID:
		v = (__u32)bpf_get_current_pid_tgid();
		break;
	case ARGDIST_SRC_UID:
		v = (__u32)bpf_get_current_uid_gid();
		break;
	case ARGDIST_SRC_GID:
		v = bpf_get_current_uid_gid() >> 32;
		break;
	case ARGDIST_SRC_PPID:
		task = (struct task_struct *)bpf_get_current_task();
		v = BPF_CORE_READ(task, real_parent, tgid);
		break;
	case ARGDIST_SRC_CGROUP:
		v = bpf_get_current_cgroup_id();
		break;
	case ARGDIST_SRC_CPU:
		v = bpf_get_smp_processor_id();
		break;
	default:
		return -1;
	}
	*out = v;
	return 0;
}

/* A number: read, divided, cut to the spec's type. */
static __always_inline int read_number(void *ctx, const int probe,
				       const volatile struct argdist_expr *e, __u64 *out)
{
	bool sign = e->flags & ARGDIST_F_SIGNED;
	__u64 div = e->div;
	__u64 v;

	if (read_raw(ctx, probe, e, &v))
		return -1;
	if (div > 1) {
		/* BPF has no signed division (before ISA v4): divide the magnitude */
		if (sign && (__s64)v < 0)
			v = -((-v) / div);
		else
			v = v / div;
	}
	*out = cut(v, e->cast, sign);
	return 0;
}

/* A string into dst (`len` bytes, a constant, zeroed by the caller). */
static __always_inline int read_string(void *ctx, const int probe,
				       const volatile struct argdist_expr *e, char *dst,
				       const __u32 len)
{
	struct task_struct *task;
	__u32 size = e->size;
	__u32 loc = 0;
	__u64 ptr;

	switch (e->source) {
	case ARGDIST_SRC_COMM:
		return bpf_get_current_comm(dst, len) ? -1 : 0;
	case ARGDIST_SRC_PCOMM:
		task = (struct task_struct *)bpf_get_current_task();
		task = BPF_CORE_READ(task, real_parent);
		return bpf_core_read_str(dst, len, &task->comm) < 0 ? -1 : 0;
	case ARGDIST_SRC_FIELD_CHARS:
		if (probe != PROBE_TP)
			return -1;
		if (size > len)
			size = len;
		return bpf_probe_read_kernel_str(dst, size, (char *)ctx + e->index) < 0 ? -1 : 0;
	case ARGDIST_SRC_FIELD_DATALOC:
	case ARGDIST_SRC_FIELD_RELLOC:
		if (probe != PROBE_TP)
			return -1;
		/* low 16 bits: where the string is; __rel_loc counts from the field's end */
		if (bpf_probe_read_kernel(&loc, sizeof(loc), (char *)ctx + e->index))
			return -1;
		loc &= 0xFFFF;
		if (e->source == ARGDIST_SRC_FIELD_RELLOC)
			loc += e->index + sizeof(loc);
		return bpf_probe_read_kernel_str(dst, len, (char *)ctx + loc) < 0 ? -1 : 0;
	default:
		break;
	}
	if (!(e->flags & ARGDIST_F_DEREF) || read_raw(ctx, probe, e, &ptr))
		return -1;
	/* user pointers (syscall and uprobe arguments) first, else kernel ones */
	if (bpf_probe_read_user_str(dst, len, (void *)ptr) >= 0)
		return 0;
	return bpf_probe_read_kernel_str(dst, len, (void *)ptr) < 0 ? -1 : 0;
}

/* 1 pass, 0 fail, -1 unreadable. */
static __always_inline int filter_pass(void *ctx, const int probe,
				       const volatile struct argdist_filter *f)
{
	__u32 op = f->op;
	__u64 v;

	if (f->expr.flags & ARGDIST_F_STRING) {
		char buf[ARGDIST_FILTER_LEN];
		bool same = true;

		/* user space keeps constants 2 bytes short: a string cut here never matches */
		__builtin_memset(buf, 0, sizeof(buf));
		if (read_string(ctx, probe, &f->expr, buf, sizeof(buf)))
			return -1;
		for (int j = 0; j < ARGDIST_FILTER_LEN; j++) {
			if (buf[j] != f->str[j]) {
				same = false;
				break;
			}
			if (!buf[j])
				break;
		}
		return op == ARGDIST_OP_EQ ? same : !same;
	}
	if (read_number(ctx, probe, &f->expr, &v))
		return -1;
	if (f->expr.flags & ARGDIST_F_SIGNED) {
		__s64 a = v, b = f->value;

		switch (op) {
		case ARGDIST_OP_EQ: return a == b;
		case ARGDIST_OP_NE: return a != b;
		case ARGDIST_OP_LT: return a < b;
		case ARGDIST_OP_LE: return a <= b;
		case ARGDIST_OP_GT: return a > b;
		case ARGDIST_OP_GE: return a >= b;
		}
	} else {
		__u64 b = f->value;

		switch (op) {
		case ARGDIST_OP_EQ: return v == b;
		case ARGDIST_OP_NE: return v != b;
		case ARGDIST_OP_LT: return v < b;
		case ARGDIST_OP_LE: return v <= b;
		case ARGDIST_OP_GT: return v > b;
		case ARGDIST_OP_GE: return v >= b;
		}
	}
	return 0;
}

/* 1 pass, 0 fail, -1 unreadable; unrolled: every configuration read is a constant. */
static __always_inline int filters_pass(void *ctx, const int probe)
{
	int r;

#pragma unroll
	for (int i = 0; i < ARGDIST_MAX_FILTERS; i++) {
		if (i >= nr_filters)
			break;
		r = filter_pass(ctx, probe, &filters[i]);
		if (r <= 0)
			return r;
	}
	return 1;
}

/* Count the key: insert it at 0 if new (another CPU may win: fine). */
static __always_inline void count(void *map, void *key)
{
	static const __u64 zero;
	__u64 *n = bpf_map_lookup_elem(map, key);

	if (!n) {
		bpf_map_update_elem(map, key, &zero, BPF_NOEXIST);
		n = bpf_map_lookup_elem(map, key);
		if (!n) {
			__sync_fetch_and_add(&dropped, 1);
			return;
		}
	}
	__sync_fetch_and_add(n, 1);
}

/* Where expression i goes in a key of either layout (i is a constant). */
#define KEY_NUMBER(key, i) ((i) == 0 ? &(key)->v0 : (i) == 1 ? &(key)->v1 :	\
			    (i) == 2 ? &(key)->v2 : &(key)->v3)
#define KEY_STRING(key, i) ((i) == 0 ? (key)->s0 : (i) == 1 ? (key)->s1 :	\
			    (i) == 2 ? (key)->s2 : (key)->s3)

/* Fill the numbers of any key layout; 0, or -1 when a value is unreadable. */
#define FILL_NUMBERS(ctx, probe, key)						\
	({									\
		int __err = 0;							\
		__u64 __v;							\
		_Pragma("unroll")						\
		for (int i = 0; i < ARGDIST_MAX_KEYS; i++) {			\
			if (i >= nr_keys)					\
				break;						\
			if (keys[i].flags & ARGDIST_F_STRING)			\
				continue;					\
			if (read_number(ctx, probe, &keys[i], &__v)) {		\
				__err = -1;					\
				break;						\
			}							\
			*KEY_NUMBER(key, i) = __v;				\
		}								\
		__err;								\
	})

#define FILL_STRINGS(ctx, probe, key)						\
	({									\
		int __err = 0;							\
		_Pragma("unroll")						\
		for (int i = 0; i < ARGDIST_MAX_KEYS; i++) {			\
			if (i >= nr_keys)					\
				break;						\
			if (!(keys[i].flags & ARGDIST_F_STRING))		\
				continue;					\
			if (read_string(ctx, probe, &keys[i], KEY_STRING(key, i),	\
					sizeof((key)->s0))) {			\
				__err = -1;					\
				break;						\
			}							\
		}								\
		__err;								\
	})

/* The histogram's slot, if any; 0, or -1 when the value is unreadable. */
#define FILL_SLOT(ctx, probe, key)						\
	({									\
		int __err = 0;							\
		__u64 __v;							\
		if (histogram) {						\
			if (read_number(ctx, probe, &value, &__v))		\
				__err = -1;					\
			else							\
				(key)->slot = log2l(__v);			\
		}								\
		__err;								\
	})

static __always_inline int summarize(void *ctx, const int probe)
{
	/* one of the three, chosen by key_kind: they share the stack */
	union {
		struct argdist_nkey n;
		struct argdist_ckey c;
		struct argdist_key l;
	} k;
	int r;

	r = filters_pass(ctx, probe);
	if (r < 0)
		goto unreadable;
	if (!r)
		return 0;
	if (key_kind == ARGDIST_KEY_NUM) {
		__builtin_memset(&k.n, 0, sizeof(k.n));
		if (FILL_NUMBERS(ctx, probe, &k.n) || FILL_SLOT(ctx, probe, &k.n))
			goto unreadable;
		count(&ncounts, &k.n);
	} else if (key_kind == ARGDIST_KEY_COMM) {
		__builtin_memset(&k.c, 0, sizeof(k.c));
		if (FILL_NUMBERS(ctx, probe, &k.c) || FILL_STRINGS(ctx, probe, &k.c) ||
		    FILL_SLOT(ctx, probe, &k.c))
			goto unreadable;
		count(&ccounts, &k.c);
	} else {
		__builtin_memset(&k.l, 0, sizeof(k.l));
		if (FILL_NUMBERS(ctx, probe, &k.l) || FILL_STRINGS(ctx, probe, &k.l) ||
		    FILL_SLOT(ctx, probe, &k.l))
			goto unreadable;
		count(&counts, &k.l);
	}
	return 0;
unreadable:
	__sync_fetch_and_add(&errors, 1);
	return 0;
}

/* Attached by user space: bpf_program__attach_tracepoint(category, event). */
SEC("tracepoint")
int argdist_tp(void *ctx)
{
	return summarize(ctx, PROBE_TP);
}

/* uprobe or uretprobe (kprobe/kretprobe too: same program type). */
SEC("uprobe")
int argdist_regs(struct pt_regs *ctx)
{
	return summarize(ctx, PROBE_REGS);
}

SEC("usdt")
int argdist_usdt(struct pt_regs *ctx)
{
	return summarize(ctx, PROBE_USDT);
}
