// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Capability checks: every cap_capable() call, the capability LSM's answer
 * to capable(), ns_capable(), has_capability()... (bcc's capable).
 *
 * Three ways in, one record, best first as the loader tries them:
 *   tracepoint capability:cap_capable  stable, one program, fires after the
 *                                      decision (ret); no `opts`, so whether
 *                                      the check is audited is unknown
 *   fexit cap_capable                  arguments and return in one program:
 *                                      audit known
 *   kprobe + kretprobe cap_capable     same, for kernels without BTF
 *                                      trampolines (arguments parked per
 *                                      thread between entry and return)
 * All run in the checking task's context: the header names it.
 *
 * Capability checks are frequent (CAP_SYS_ADMIN on many mmaps, CAP_SETUID
 * on every setuid...), so filters run here, before the ring: a pid,
 * our own pid, known non-audit checks, and --unique's one record per
 * (process image, capability, verdict, namespace kind).
 */
#include "common.bpf.h"
#include "core_fixes.bpf.h"
#include "syscall.bpf.h"
#include "path.bpf.h"
#include <bpf/bpf_tracing.h>
#include "capable.h"

VIGIL_RECORD(capable_event);
enum capable_verdict *__vigil_enum_verdict __attribute__((unused));
enum capable_audit *__vigil_enum_audit __attribute__((unused));

#define EPERM 1
/* include/linux/security.h: the check must not be audited (a probe). */
#define CAP_OPT_NOAUDIT (1U << 1)

/* Filters set by user space before load; 0 = off. */
const volatile __u32 targ_pid = 0;	/* only this process */
const volatile __u32 ignore_pid = 0;	/* never this one (the tool itself) */
const volatile __u8 skip_noaudit = 0;	/* drop checks known to be CAP_OPT_NOAUDIT */
const volatile __u8 unique = 0;		/* report a repeated check once */

/*
 * The memory-accounting check: cap_vm_enough_memory() asks whether the
 * process has CAP_SYS_ADMIN to size its overcommit reserve, on every exec,
 * fork, mmap and brk of every process.  Never audited, it grants nothing,
 * and on kernels whose cap_capable() is reached by fexit or kprobes it is
 * not seen at all (inlined there).  The tracepoint does not say who asked
 * (no `opts`), so the caller is read from the kernel stack: a return
 * address in cap_vm_enough_memory(), or in security_vm_enough_memory_mm()
 * where that is inlined (6.18).  Their text, [start, end), is found in
 * kallsyms by user space; 0: unknown, and every check is kept.
 */
const volatile __u64 acct_fn_start = 0;		/* cap_vm_enough_memory */
const volatile __u64 acct_fn_end = 0;
const volatile __u64 acct_hook_start = 0;	/* security_vm_enough_memory_mm */
const volatile __u64 acct_hook_end = 0;
const volatile __u8 skip_accounting = 0;	/* drop those checks (the monitor) */
#define CAP_SYS_ADMIN 21
/* [0] is cap_capable() itself, [1] its caller; one more in case */
#define ACCT_FRAMES 3

/*
 * --unique: what makes a check "the same".  The syscall in progress: a
 * mount's CAP_SYS_ADMIN is news even after the one every exec makes for
 * memory accounting (execve, mmap).  The process image, not just
 * the pid: start time (a reused pid is another process) and the exec
 * count (after execve the same pid runs another program, whose checks are
 * news).  The verdict and the namespace kind are part of it so that an
 * allowed check never hides a later denial, nor a check inside a user
 * namespace one against the host.
 */
struct capable_key {
	__u64 start_ns;		/* process start, CLOCK_BOOTTIME */
	__u64 exec_id;		/* task->self_exec_id: +1 per exec */
	__u32 pid;
	__s32 cap;
	__s32 syscall_nr;
	__u8 denied;
	__u8 init_ns;
	__u8 __pad[2];
};

/* LRU: a forgotten key costs one more record, never a lost one. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct capable_key);
	__type(value, __u8);
} capable_seen SEC(".maps");

static __always_inline bool pid_wanted(__u32 pid)
{
	if (targ_pid && pid != targ_pid)
		return false;
	return !(ignore_pid && pid == ignore_pid);
}

/* True when an identical check of this process image was reported already. */
static __always_inline bool repeated(struct task_struct *task, __u32 pid, int cap,
				     bool denied, bool init_ns, long syscall_nr)
{
	struct capable_key key = {};

	key.pid = pid;
	key.cap = cap;
	key.denied = denied;
	key.init_ns = init_ns;
	key.syscall_nr = syscall_nr;
	key.start_ns = task_start_boottime(BPF_CORE_READ(task, group_leader));
	/* u64 since 5.7 (d1e7fd6462ca "signal: Extend exec_id to 64bits");
	 * ring buffers need 5.8, so no older layout reaches this code */
	key.exec_id = BPF_CORE_READ(task, self_exec_id);
	return seen_before(&capable_seen, &key);
}

/* A record with `exe`: too big for the stack, built here and copied out. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct capable_event);
} capable_scratch SEC(".maps");

#define CAPABLE_FIXED_SIZE offsetof(struct capable_event, exe)

static __always_inline void fill(struct capable_event *e, struct task_struct *task,
				 const struct cred *cred, struct user_namespace *target_ns,
				 int cap, int ret, enum capable_audit audit, bool init_ns,
				 int syscall_nr)
{
	fill_header(&e->hdr, VIGIL_EV_CAPABLE);
	e->cap = cap;
	e->ret = ret;
	e->verdict = ret ? CAPABLE_VERDICT_DENIED : CAPABLE_VERDICT_ALLOWED;
	e->audit = audit;
	e->target_ns_inum = BPF_CORE_READ(target_ns, ns.inum);
	e->cred_ns_inum = BPF_CORE_READ(cred, user_ns, ns.inum);
	e->init_ns = init_ns;
	/* the subjective creds (current_cred()) are what the task's own checks use */
	e->other_cred = BPF_CORE_READ(task, cred) != cred;
	__builtin_memset(e->__pad, 0, sizeof(e->__pad));
	e->syscall_nr = syscall_nr;
	e->syscall = syscall_nr;
}

/*
 * A check inside execve(): the record names its program itself (see
 * capable.h).  Few checks run there, so the path walk costs little.
 */
static __always_inline int emit_in_exec(struct task_struct *task, const struct cred *cred,
					struct user_namespace *target_ns, int cap, int ret,
					enum capable_audit audit, bool init_ns, int syscall_nr)
{
	__u32 zero = 0;
	struct capable_event *e = bpf_map_lookup_elem(&capable_scratch, &zero);
	long len;

	if (!e)
		return 0;
	fill(e, task, cred, target_ns, cap, ret, audit, init_ns, syscall_nr);
	len = read_task_exe(task, e->exe, sizeof(e->exe), &e->hdr.flags);
	if (len <= 0) {
		e->hdr.flags |= VIGIL_F_PARTIAL;
		stat_inc(VIGIL_EV_CAPABLE, VIGIL_STAT_PARTIAL);
		len = 1;	/* "": user space falls back to the process table */
	}
	if (len > sizeof(e->exe))
		len = sizeof(e->exe);
	output_event(&e->hdr, CAPABLE_FIXED_SIZE + len);
	return 0;
}

static __always_inline int emit(const struct cred *cred, struct user_namespace *target_ns,
				int cap, int ret, enum capable_audit audit)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct capable_event *e;
	bool init_ns, denied = ret != 0;
	long syscall_nr;

	if (!pid_wanted(bpf_get_current_pid_tgid() >> 32))
		return 0;
	if (skip_noaudit && audit == CAPABLE_AUDIT_NO)
		return 0;
	/* only the initial user namespace is at level 0 */
	init_ns = BPF_CORE_READ(target_ns, level) == 0;
	syscall_nr = current_syscall_nr();
	if (unique &&
	    repeated(task, bpf_get_current_pid_tgid() >> 32, cap, denied, init_ns, syscall_nr))
		return 0;
	if (task_in_execve(task))
		return emit_in_exec(task, cred, target_ns, cap, ret, audit, init_ns, syscall_nr);
	e = reserve_event(VIGIL_EV_CAPABLE, CAPABLE_FIXED_SIZE);
	if (!e)
		return 0;
	fill(e, task, cred, target_ns, cap, ret, audit, init_ns, syscall_nr);
	submit_event(&e->hdr, CAPABLE_FIXED_SIZE);
	return 0;
}

static __always_inline enum capable_audit audit_of(unsigned int opts)
{
	return opts & CAP_OPT_NOAUDIT ? CAPABLE_AUDIT_NO : CAPABLE_AUDIT_YES;
}

static __always_inline bool in_accounting(__u64 ip)
{
	return (ip >= acct_fn_start && ip < acct_fn_end) ||
	       (ip >= acct_hook_start && ip < acct_hook_end);
}

/*
 * Whether the memory accounting made this check (see acct_fn_start), by
 * the unwinder; fills `ips` (0 past what it read).
 */
static __always_inline bool accounting_by_stack(void *ctx, __u64 ips[ACCT_FRAMES])
{
	long len = bpf_get_stack(ctx, ips, ACCT_FRAMES * sizeof(ips[0]), 0);

	for (int i = 0; i < ACCT_FRAMES; i++) {
		if (len < (i + 1) * (long)sizeof(ips[0])) {
			ips[i] = 0;
			continue;
		}
		if (in_accounting(ips[i]))
			return true;
	}
	return false;
}

/*
 * The caller without the unwinder.  bpf_get_stack() walks the ORC tables
 * and checks every address against kernel, module and BPF text: about
 * 1 us, paid on every mmap, brk and exec of every process.  A perf
 * tracepoint's context begins with the registers its probe saved
 * (perf_trace_run_bpf_submit): the probe's frame, called by cap_capable(),
 * whose return address into its own caller lies a fixed distance above
 * it, fixed by the kernel build.  That distance is learned here, by
 * comparing the stack words above the frame with the unwinder's caller
 * over checks from different callers (accounting and others): the one
 * word that always equals it is the return address, not a stale copy of
 * one.  Once learned, a check reads one word instead of walking the
 * stack.  One check in ACCT_VERIFY_EVERY is still walked as well and
 * compared; any difference (a livepatched cap_capable(), the function
 * graph tracer rewriting return addresses) forgets the slot for good and
 * the unwinder alone is used.  Until learned, or where nothing fits, the
 * unwinder decides, as before.
 */
#define ACCT_SLOTS		64	/* stack words searched: 512 bytes above the frame */
#define ACCT_LEARN_ACCT		8	/* accounting checks, and ... */
#define ACCT_LEARN_OTHER	8	/* ... others, agreeing before the slot is trusted */
#define ACCT_LEARN_MAX		4096	/* checks sampled before giving up */
#define ACCT_VERIFY_EVERY	64	/* power of 2 */

struct acct_slot_state {
	__u8 excluded[ACCT_SLOTS];	/* 1: word k differed from the unwinder's caller once */
	__u32 n_acct;		/* accounting checks compared */
	__u32 n_other;		/* other checks compared */
	__u32 n_tried;		/* checks sampled while learning */
	__s32 slot;		/* 0: learning; > 0: the word; -1: none (the unwinder only) */
	__u32 n_verified;	/* checks walked again once learned */
	__u32 n_mismatch;	/* of them, answers that differed (then slot = -1) */
	__u64 probe_ret;	/* the probe's return address the slot was learnt with */
};

/* One entry, shared by all CPUs: a lost update of a racing CPU costs a
 * sample, never a wrong slot (the true word never differs). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct acct_slot_state);
} acct_slot_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64[ACCT_SLOTS]);
} acct_stack_words SEC(".maps");

/* The stack pointer the perf probe saved; 0 if unreadable. */
static __always_inline __u64 probe_frame(void *ctx, __u64 *ip)
{
	struct pt_regs *regs = NULL;

	/* the context's first word: perf_trace_run_bpf_submit() stores the
	 * probe's pt_regs there (not readable as a field: it is the header) */
	if (bpf_probe_read_kernel(&regs, sizeof(regs), ctx) || !regs)
		return 0;
	*ip = PT_REGS_IP_CORE(regs);
	return PT_REGS_SP_CORE(regs);
}

static __noinline void learn_acct_slot(void *ctx, struct acct_slot_state *st, int cap)
{
	__u64 ips[ACCT_FRAMES], ip = 0, sp;
	__u32 zero = 0;
	__u64 *words = bpf_map_lookup_elem(&acct_stack_words, &zero);
	bool acct, several = false;
	int found = 0;

	if (!words)
		return;
	/* enough others: only CAP_SYS_ADMIN can still be an accounting check */
	if (st->n_other >= ACCT_LEARN_OTHER && cap != CAP_SYS_ADMIN)
		return;
	if (++st->n_tried > ACCT_LEARN_MAX) {
		st->slot = -1;
		return;
	}
	acct = accounting_by_stack(ctx, ips);
	sp = probe_frame(ctx, &ip);
	/* the unwinder's first address is the probe's return into cap_capable() */
	if (!sp || !ips[1] || ip != ips[0])
		return;
	/*
	 * One layout: the probe called from one place.  Another tracer on
	 * the tracepoint (an ftrace event, a raw_tp) makes cap_capable() call
	 * __traceiter_cap_capable(), which calls the probe: a frame more, and
	 * the caller is the unwinder's third address, not its second.  An
	 * accounting check whose second address is not the accounting's is
	 * such a layout: it would teach the word of the return into
	 * cap_capable(), which no accounting check is told by.
	 */
	if (st->probe_ret && ip != st->probe_ret)
		return;
	if (acct && !in_accounting(ips[0]) && !in_accounting(ips[1]))
		return;
	st->probe_ret = ip;
	if (bpf_probe_read_kernel(words, ACCT_SLOTS * sizeof(__u64), (void *)sp))
		return;
	/* flags in the map, not bits in a register: the verifier then sees
	 * one state per word, not one per combination */
	st->excluded[0] = 1;	/* the saved frame pointer */
	for (int k = 1; k < ACCT_SLOTS; k++)
		if (words[k] != ips[1])
			st->excluded[k] = 1;
	if (acct)
		st->n_acct++;
	else
		st->n_other++;
	if (st->n_acct < ACCT_LEARN_ACCT || st->n_other < ACCT_LEARN_OTHER)
		return;
	for (int k = 1; k < ACCT_SLOTS; k++) {
		if (st->excluded[k])
			continue;
		if (found)
			several = true;
		else
			found = k;
	}
	if (!found)
		st->slot = -1;
	else if (!several)
		st->slot = found;
	/* several: the next checks tell them apart */
}

/* Whether the memory accounting made this check. */
static __always_inline bool accounting_check(void *ctx, struct acct_slot_state *st)
{
	__u64 ips[ACCT_FRAMES], ip = 0, sp, ret = 0;
	__s32 slot;
	bool acct;

	if (!acct_fn_start && !acct_hook_start)
		return false;
	slot = st ? st->slot : -1;
	if (slot <= 0 || slot >= ACCT_SLOTS)
		return accounting_by_stack(ctx, ips);
	sp = probe_frame(ctx, &ip);
	/* the probe called from elsewhere (another tracer came): the word
	 * is not where it was learnt; the unwinder decides until it leaves */
	if (!sp || ip != st->probe_ret ||
	    bpf_probe_read_kernel(&ret, sizeof(ret), (void *)(sp + slot * 8)))
		return accounting_by_stack(ctx, ips);
	acct = in_accounting(ip) || in_accounting(ret);
	if ((bpf_get_prandom_u32() & (ACCT_VERIFY_EVERY - 1)) == 0) {
		st->n_verified++;
		if (accounting_by_stack(ctx, ips) != acct) {
			st->n_mismatch++;
			st->slot = -1;
			return !acct;	/* the unwinder's answer */
		}
	}
	return acct;
}

/* -- tracepoint (6.14+) ---------------------------------------------------------- */
SEC("tracepoint/capability/cap_capable")
int handle_cap_capable(struct trace_event_raw_cap_capable *ctx)
{
	enum capable_audit audit = CAPABLE_AUDIT_UNKNOWN;
	__u32 zero = 0;
	struct acct_slot_state *st = bpf_map_lookup_elem(&acct_slot_state, &zero);

	/* learnt from any check of any process: they are many, and varied */
	if (st && st->slot == 0 && (acct_fn_start || acct_hook_start))
		learn_acct_slot(ctx, st, ctx->cap);
	/* the caller is read only for what accounting asks: CAP_SYS_ADMIN
	 * against the initial user namespace, of a process we report */
	if (ctx->cap == CAP_SYS_ADMIN && pid_wanted(bpf_get_current_pid_tgid() >> 32) &&
	    BPF_CORE_READ(ctx->target_ns, level) == 0 && accounting_check(ctx, st)) {
		if (skip_accounting)
			return 0;
		audit = CAPABLE_AUDIT_NO;
	}
	return emit(ctx->cred, ctx->target_ns, ctx->cap, ctx->ret, audit);
}

/*
 * -- fexit ------------------------------------------------------------------------
 * int cap_capable(const struct cred *cred, struct user_namespace *ns,
 *                 int cap, unsigned int opts)
 * `opts` replaced `int audit` in 5.1 (c1a85a00ea66 "LSM: generalize flag
 * passing to security_capable"); ring buffers need 5.8, so only `opts`
 * kernels run this.
 */
SEC("fexit/cap_capable")
int BPF_PROG(capable_fexit, const struct cred *cred, struct user_namespace *ns, int cap,
	     unsigned int opts, int ret)
{
	return emit(cred, ns, cap, ret, audit_of(opts));
}

/* -- kprobe + kretprobe -------------------------------------------------------------- */
struct capable_args {
	const struct cred *cred;
	struct user_namespace *ns;
	__s32 cap;
	__u32 opts;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);		/* tid: one check in flight per thread */
	__type(value, struct capable_args);
} capable_inflight SEC(".maps");

SEC("kprobe/cap_capable")
int BPF_KPROBE(capable_kprobe, const struct cred *cred, struct user_namespace *ns, int cap,
	       unsigned int opts)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct capable_args args = {.cred = cred, .ns = ns, .cap = cap, .opts = opts};

	/* filter at entry: a filtered-out check costs no map update */
	if (!pid_wanted(id >> 32))
		return 0;
	if (skip_noaudit && (opts & CAP_OPT_NOAUDIT))
		return 0;
	/* a check we cannot park is a record lost: count it */
	if (bpf_map_update_elem(&capable_inflight, &tid, &args, BPF_ANY))
		stat_inc(VIGIL_EV_CAPABLE, VIGIL_STAT_LOST);
	return 0;
}

SEC("kretprobe/cap_capable")
int BPF_KRETPROBE(capable_kretprobe, int ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct capable_args *a = bpf_map_lookup_elem(&capable_inflight, &tid);
	struct capable_args args;

	if (!a)
		return 0;	/* entry filtered, or missed (map full) */
	args = *a;
	bpf_map_delete_elem(&capable_inflight, &tid);
	return emit(args.cred, args.ns, args.cap, ret, audit_of(args.opts));
}
