// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Identity changes: the setuid family, the setgid family and capset,
 * with the ids (or capability sets) before and after, and the result.
 *
 *   syscalls   sys_enter_* keeps the arguments and the task's credentials
 *              at entry; sys_exit_* reads them again (commit_creds has
 *              installed the new ones) and emits.  "Who became uid 0" is
 *              old_euid != 0 and new_euid == 0.
 *
 * Volume: a daemon dropping privileges per request, or a loop of
 * setuid(0) by root, calls these at very high rates while changing
 * nothing.  With `unique` (vigil monitor) a call that changed nothing is
 * reported once per (process image, call, arguments, result); every call
 * that changed an id or a capability set is always reported.
 */
#include "common.bpf.h"
#include "core_fixes.bpf.h"
#include "syscall.bpf.h"
#include "creds.h"

VIGIL_RECORD(setuid_event);
VIGIL_RECORD(setgid_event);
VIGIL_RECORD(capset_event);
enum setuid_syscall *__vigil_enum_setuid_syscall __attribute__((unused));
enum setgid_syscall *__vigil_enum_setgid_syscall __attribute__((unused));

const volatile __u32 targ_pid = 0;	/* only this process; 0 = all */
const volatile __u8 unique = 0;		/* calls that changed nothing: once */

VIGIL_INFLIGHT(setuid_calls, setuid_event, 4096);
VIGIL_INFLIGHT(setgid_calls, setgid_event, 4096);
VIGIL_INFLIGHT(capset_calls, capset_event, 1024);

struct nochange_key {
	__u64 start_ns;
	__u64 exec_id;
	__u32 pid;
	__u32 what;		/* kind << 16 | syscall */
	__s32 args[3];
	__s32 ret;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct nochange_key);
	__type(value, __u8);
} creds_seen SEC(".maps");

static __always_inline bool repeated(__u32 what, __s32 a0, __s32 a1, __s32 a2, __s32 ret)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct nochange_key key = {};

	key.start_ns = task_start_boottime(BPF_CORE_READ(task, group_leader));
	key.exec_id = BPF_CORE_READ(task, self_exec_id);
	key.pid = bpf_get_current_pid_tgid() >> 32;
	key.what = what;
	key.args[0] = a0;
	key.args[1] = a1;
	key.args[2] = a2;
	key.ret = ret;
	return seen_before(&creds_seen, &key);
}

static __always_inline bool wanted(void)
{
	return !targ_pid || (bpf_get_current_pid_tgid() >> 32) == targ_pid;
}

static __always_inline const struct cred *current_creds(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(task, cred);
}

/* -- setuid family ----------------------------------------------------------------- */
static __always_inline void read_uids(const struct cred *c, __u32 *ids)
{
	ids[0] = BPF_CORE_READ(c, uid.val);
	ids[1] = BPF_CORE_READ(c, euid.val);
	ids[2] = BPF_CORE_READ(c, suid.val);
	ids[3] = BPF_CORE_READ(c, fsuid.val);
}

static __always_inline void read_gids(const struct cred *c, __u32 *ids)
{
	ids[0] = BPF_CORE_READ(c, gid.val);
	ids[1] = BPF_CORE_READ(c, egid.val);
	ids[2] = BPF_CORE_READ(c, sgid.val);
	ids[3] = BPF_CORE_READ(c, fsgid.val);
}

static __always_inline bool same_ids(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* The uid and gid records share their layout: one body for both. */
#define SETID_ENTER(map, kind, nr, nargs, read_ids, first_old)			\
	({									\
		struct map##_slot *__s;						\
		if (wanted()) {							\
			__s = inflight_start(map, kind, ctx, nargs);		\
			if (__s) {						\
				__s->ev.syscall = nr;				\
				__s->ev.arg0 = __s->args[0];			\
				__s->ev.arg1 = nargs > 1 ? (__s32)__s->args[1] : 0;	\
				__s->ev.arg2 = nargs > 2 ? (__s32)__s->args[2] : 0;	\
				read_ids(current_creds(), &__s->ev.first_old);	\
			}							\
		}								\
		0;								\
	})

#define SETID_EXIT(map, kind, read_ids, first_old, first_new)			\
	({									\
		struct map##_slot *__s = inflight_get(map);			\
		if (__s) {							\
			__s->ev.ret = ctx->ret;					\
			read_ids(current_creds(), &__s->ev.first_new);		\
			if (!(unique &&						\
			      same_ids(&__s->ev.first_old, &__s->ev.first_new) &&	\
			      repeated(kind << 16 | __s->ev.syscall, __s->ev.arg0,	\
				       __s->ev.arg1, __s->ev.arg2, __s->ev.ret)))	\
				emit_record(&__s->ev.hdr, sizeof(__s->ev));	\
			inflight_end(map);					\
		}								\
		0;								\
	})

#define UID_ENTER(nr, nargs) \
	SETID_ENTER(setuid_calls, VIGIL_EV_SETUID, nr, nargs, read_uids, old_uid)
#define UID_EXIT() SETID_EXIT(setuid_calls, VIGIL_EV_SETUID, read_uids, old_uid, new_uid)
#define GID_ENTER(nr, nargs) \
	SETID_ENTER(setgid_calls, VIGIL_EV_SETGID, nr, nargs, read_gids, old_gid)
#define GID_EXIT() SETID_EXIT(setgid_calls, VIGIL_EV_SETGID, read_gids, old_gid, new_gid)

SEC("tracepoint/syscalls/sys_enter_setuid")
int setuid_enter(struct trace_event_raw_sys_enter *ctx) { return UID_ENTER(SETUID_SYSCALL_SETUID, 1); }
SEC("tracepoint/syscalls/sys_enter_setreuid")
int setreuid_enter(struct trace_event_raw_sys_enter *ctx) { return UID_ENTER(SETUID_SYSCALL_SETREUID, 2); }
SEC("tracepoint/syscalls/sys_enter_setresuid")
int setresuid_enter(struct trace_event_raw_sys_enter *ctx) { return UID_ENTER(SETUID_SYSCALL_SETRESUID, 3); }
SEC("tracepoint/syscalls/sys_enter_setfsuid")
int setfsuid_enter(struct trace_event_raw_sys_enter *ctx) { return UID_ENTER(SETUID_SYSCALL_SETFSUID, 1); }
SEC("tracepoint/syscalls/sys_exit_setuid")
int setuid_exit(struct trace_event_raw_sys_exit *ctx) { return UID_EXIT(); }
SEC("tracepoint/syscalls/sys_exit_setreuid")
int setreuid_exit(struct trace_event_raw_sys_exit *ctx) { return UID_EXIT(); }
SEC("tracepoint/syscalls/sys_exit_setresuid")
int setresuid_exit(struct trace_event_raw_sys_exit *ctx) { return UID_EXIT(); }
SEC("tracepoint/syscalls/sys_exit_setfsuid")
int setfsuid_exit(struct trace_event_raw_sys_exit *ctx) { return UID_EXIT(); }

SEC("tracepoint/syscalls/sys_enter_setgid")
int setgid_enter(struct trace_event_raw_sys_enter *ctx) { return GID_ENTER(SETGID_SYSCALL_SETGID, 1); }
SEC("tracepoint/syscalls/sys_enter_setregid")
int setregid_enter(struct trace_event_raw_sys_enter *ctx) { return GID_ENTER(SETGID_SYSCALL_SETREGID, 2); }
SEC("tracepoint/syscalls/sys_enter_setresgid")
int setresgid_enter(struct trace_event_raw_sys_enter *ctx) { return GID_ENTER(SETGID_SYSCALL_SETRESGID, 3); }
SEC("tracepoint/syscalls/sys_enter_setfsgid")
int setfsgid_enter(struct trace_event_raw_sys_enter *ctx) { return GID_ENTER(SETGID_SYSCALL_SETFSGID, 1); }
SEC("tracepoint/syscalls/sys_exit_setgid")
int setgid_exit(struct trace_event_raw_sys_exit *ctx) { return GID_EXIT(); }
SEC("tracepoint/syscalls/sys_exit_setregid")
int setregid_exit(struct trace_event_raw_sys_exit *ctx) { return GID_EXIT(); }
SEC("tracepoint/syscalls/sys_exit_setresgid")
int setresgid_exit(struct trace_event_raw_sys_exit *ctx) { return GID_EXIT(); }
SEC("tracepoint/syscalls/sys_exit_setfsgid")
int setfsgid_exit(struct trace_event_raw_sys_exit *ctx) { return GID_EXIT(); }

/* -- capset ------------------------------------------------------------------------ */
/*
 * kernel_cap_t is one u64 since 6.3 (f122a08b197d "capability: just use
 * a 'u64' instead of a 'u32[2]' array") and two u32 before, low word
 * first: on little-endian both read as the same 8 bytes.
 */
static __always_inline void read_caps(const struct cred *c, __u64 *eff, __u64 *perm, __u64 *inh)
{
	bpf_core_read(eff, sizeof(*eff), &c->cap_effective);
	bpf_core_read(perm, sizeof(*perm), &c->cap_permitted);
	bpf_core_read(inh, sizeof(*inh), &c->cap_inheritable);
}

SEC("tracepoint/syscalls/sys_enter_capset")
int capset_enter(struct trace_event_raw_sys_enter *ctx)
{
	/* (cap_user_header_t header, const cap_user_data_t data) */
	struct capset_calls_slot *s;
	struct capset_event *e;

	if (!wanted())
		return 0;
	s = inflight_start(capset_calls, VIGIL_EV_CAPSET, ctx, 2);
	if (!s)
		return 0;
	e = &s->ev;
	read_caps(current_creds(), &e->old_effective, &e->old_permitted, &e->old_inheritable);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_capset")
int capset_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct capset_calls_slot *s = inflight_get(capset_calls);
	struct capset_event *e;
	bool same;

	if (!s)
		return 0;
	e = &s->ev;
	e->ret = ctx->ret;
	/* struct __user_cap_header_struct { __u32 version; int pid; }: copied by now */
	if (bpf_probe_read_user(&e->target_pid, sizeof(e->target_pid), (void *)s->args[0] + 4))
		e->hdr.flags |= VIGIL_F_PARTIAL;
	read_caps(current_creds(), &e->new_effective, &e->new_permitted, &e->new_inheritable);
	same = e->old_effective == e->new_effective && e->old_permitted == e->new_permitted &&
	       e->old_inheritable == e->new_inheritable;
	if (!(unique && same && repeated(VIGIL_EV_CAPSET << 16, 0, 0, 0, e->ret)))
		emit_record(&e->hdr, sizeof(*e));
	inflight_end(capset_calls);
	return 0;
}
