// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * BPF use: program loads and attaches by any process, so that a rootkit
 * loading BPF is seen.  Vigil's own loads are reported too, marked
 * `by_vigil` (the caller's pid is the agent's): never hidden.
 *
 *   syscalls   sys_enter_bpf keeps the command and the attr pointer (for
 *              the four commands reported only); sys_exit_bpf reads what
 *              the kernel made: for a success, the program behind the
 *              returned (or attached) fd: type, name, id, the function it
 *              hooks (source = kernel); for a failure, the caller's attr,
 *              as passed (source = caller).
 *   lsm        bpf: the kernel's copy of the attr, for failures too.
 *              Not loadable here (EPERM).
 */
#include "common.bpf.h"
#include "syscall.bpf.h"
#include <bpf/bpf_tracing.h>
#include "bpf.h"

VIGIL_RECORD(bpf_event);
enum bpf_info_source *__vigil_enum_bpf_info_source __attribute__((unused));

const volatile __u32 agent_pid = 0;	/* the loading Vigil process */

VIGIL_INFLIGHT(bpf_calls, bpf_event, 1024);

static __always_inline bool reported(long cmd)
{
	return cmd == BPF_PROG_LOAD || cmd == BPF_PROG_ATTACH || cmd == BPF_LINK_CREATE ||
	       cmd == BPF_RAW_TRACEPOINT_OPEN;
}

SEC("tracepoint/syscalls/sys_enter_bpf")
int bpf_enter(struct trace_event_raw_sys_enter *ctx)
{
	/* (int cmd, union bpf_attr *uattr, unsigned int size) */
	struct bpf_calls_slot *s;

	if (!reported(ctx->args[0]))
		return 0;
	s = inflight_start(bpf_calls, VIGIL_EV_BPF, ctx, 3);
	if (!s)
		return 0;
	s->ev.cmd = s->args[0];
	s->ev.target_fd = -1;
	s->ev.by_vigil = agent_pid && s->ev.hdr.pid == agent_pid;
	return 0;
}

/* Type, name, id and hooked function of a loaded program: the kernel's. */
static __always_inline void read_prog(struct bpf_event *e, struct bpf_prog *prog)
{
	struct bpf_prog_aux *aux = BPF_CORE_READ(prog, aux);
	const char *func;

	e->prog_type = BPF_CORE_READ(prog, type);
	if (e->cmd == BPF_PROG_LOAD)
		e->attach_type = BPF_CORE_READ(prog, expected_attach_type);
	e->prog_id = BPF_CORE_READ(aux, id);
	BPF_CORE_READ_STR_INTO(&e->prog_name, aux, name);
	func = BPF_CORE_READ(aux, attach_func_name);
	if (func)
		bpf_probe_read_kernel_str(e->attach_to, sizeof(e->attach_to), func);
	e->source = BPF_INFO_SOURCE_KERNEL;
}

static __always_inline struct bpf_prog *prog_of_fd(long fd)
{
	struct file *f = current_fd_file(fd);

	return f ? BPF_CORE_READ(f, private_data) : NULL;
}

/* The caller's attr, as passed (the kernel copied it: its pages are in). */
static __always_inline void read_attr(struct bpf_event *e, union bpf_attr *uattr)
{
	__u32 *flags = &e->hdr.flags;
	long err = 0;

	switch (e->cmd) {
	case BPF_PROG_LOAD:
		err |= bpf_probe_read_user(&e->prog_type, 4, &uattr->prog_type);
		err |= bpf_probe_read_user(&e->attach_type, 4, &uattr->expected_attach_type);
		err |= bpf_probe_read_user_str(e->prog_name, sizeof(e->prog_name),
					       uattr->prog_name) < 0;
		break;
	case BPF_PROG_ATTACH:
		err |= bpf_probe_read_user(&e->target_fd, 4, &uattr->target_fd);
		err |= bpf_probe_read_user(&e->attach_type, 4, &uattr->attach_type);
		err |= bpf_probe_read_user(&e->attach_flags, 4, &uattr->attach_flags);
		break;
	case BPF_LINK_CREATE:
		err |= bpf_probe_read_user(&e->target_fd, 4, &uattr->link_create.target_fd);
		err |= bpf_probe_read_user(&e->attach_type, 4, &uattr->link_create.attach_type);
		err |= bpf_probe_read_user(&e->attach_flags, 4, &uattr->link_create.flags);
		break;
	case BPF_RAW_TRACEPOINT_OPEN: {
		__u64 name = 0;

		err |= bpf_probe_read_user(&name, sizeof(name), &uattr->raw_tracepoint.name);
		if (name && !err)
			read_user_string(e->attach_to, sizeof(e->attach_to), (void *)name, flags);
		break;
	}
	default:
		break;
	}
	if (err)
		*flags |= VIGIL_F_PARTIAL;
}

/* The program an attach named, by its fd in the attr: the kernel's. */
static __always_inline __s32 attached_prog_fd(struct bpf_event *e, union bpf_attr *uattr)
{
	__s32 fd = -1;

	if (e->cmd == BPF_PROG_ATTACH)
		bpf_probe_read_user(&fd, 4, &uattr->attach_bpf_fd);
	else if (e->cmd == BPF_LINK_CREATE)
		bpf_probe_read_user(&fd, 4, &uattr->link_create.prog_fd);
	else if (e->cmd == BPF_RAW_TRACEPOINT_OPEN)
		bpf_probe_read_user(&fd, 4, &uattr->raw_tracepoint.prog_fd);
	return fd;
}

SEC("tracepoint/syscalls/sys_exit_bpf")
int bpf_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct bpf_calls_slot *s = inflight_get(bpf_calls);
	union bpf_attr *uattr;
	struct bpf_event *e;
	struct bpf_prog *prog = NULL;
	bool kernel_attr;

	if (!s)
		return 0;
	e = &s->ev;
	e->ret = ctx->ret;
	uattr = (union bpf_attr *)s->args[1];
	kernel_attr = e->source == BPF_INFO_SOURCE_KERNEL;	/* the LSM hook ran */
	if (!kernel_attr)
		read_attr(e, uattr);
	if (e->ret >= 0) {
		if (e->cmd == BPF_PROG_LOAD)
			prog = prog_of_fd(e->ret);
		else
			prog = prog_of_fd(attached_prog_fd(e, uattr));
		if (prog)
			read_prog(e, prog);
	}
	emit_record(&e->hdr, sizeof(*e));
	inflight_end(bpf_calls);
	return 0;
}

/* -- LSM: the kernel's copy of the attr ------------------------------------------- */
SEC("lsm/bpf")
int BPF_PROG(bpf_lsm_bpf, int cmd, union bpf_attr *attr, unsigned int size)
{
	struct bpf_calls_slot *s = inflight_get(bpf_calls);
	struct bpf_event *e;

	if (!s)
		return 0;
	e = &s->ev;
	switch (cmd) {
	case BPF_PROG_LOAD:
		e->prog_type = BPF_CORE_READ(attr, prog_type);
		e->attach_type = BPF_CORE_READ(attr, expected_attach_type);
		BPF_CORE_READ_STR_INTO(&e->prog_name, attr, prog_name);
		break;
	case BPF_PROG_ATTACH:
		e->target_fd = BPF_CORE_READ(attr, target_fd);
		e->attach_type = BPF_CORE_READ(attr, attach_type);
		e->attach_flags = BPF_CORE_READ(attr, attach_flags);
		break;
	case BPF_LINK_CREATE:
		e->target_fd = BPF_CORE_READ(attr, link_create.target_fd);
		e->attach_type = BPF_CORE_READ(attr, link_create.attach_type);
		e->attach_flags = BPF_CORE_READ(attr, link_create.flags);
		break;
	default:
		return 0;	/* raw tracepoint name: still a user pointer in the attr */
	}
	e->source = BPF_INFO_SOURCE_KERNEL;
	return 0;
}
