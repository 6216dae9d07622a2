// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * memfd_create(2): anonymous in-memory files, the first step of most
 * fileless execs (write an ELF into a memfd, execveat it).  The exec
 * itself is flagged by the exec sensor; this records the creation.
 *
 *   syscalls   sys_enter_memfd_create keeps the arguments; at
 *              sys_exit_memfd_create a success reads the name from the
 *              new file's dentry (the kernel's copy, "memfd:NAME"), a
 *              failure the name as passed by the caller.
 */
#include "common.bpf.h"
#include "syscall.bpf.h"
#include "memfd.h"

VIGIL_RECORD(memfd_event);
enum memfd_name_source *__vigil_enum_memfd_name_source __attribute__((unused));

#define MEMFD_PREFIX_LEN 6	/* "memfd:" */

VIGIL_INFLIGHT(memfd_calls, memfd_event, 1024);

SEC("tracepoint/syscalls/sys_enter_memfd_create")
int memfd_enter(struct trace_event_raw_sys_enter *ctx)
{
	/* (const char *uname, unsigned int flags) */
	struct memfd_calls_slot *s = inflight_start(memfd_calls, VIGIL_EV_MEMFD, ctx, 2);

	if (s)
		s->ev.mfd_flags = s->args[1];
	return 0;
}

/* The dentry name without "memfd:"; false when it cannot be read. */
static __always_inline bool read_kernel_name(struct memfd_event *e, struct file *f)
{
	const unsigned char *name = BPF_CORE_READ(f, f_path.dentry, d_name.name);
	char prefix[MEMFD_PREFIX_LEN] = {};

	if (!name || bpf_probe_read_kernel(prefix, sizeof(prefix), name))
		return false;
	/* hugetlbfs and shmem both name it "memfd:..."; anything else is kept whole */
	if (prefix[0] == 'm' && prefix[1] == 'e' && prefix[2] == 'm' && prefix[3] == 'f' &&
	    prefix[4] == 'd' && prefix[5] == ':')
		name += MEMFD_PREFIX_LEN;
	return bpf_probe_read_kernel_str(e->name, sizeof(e->name), name) > 0;
}

SEC("tracepoint/syscalls/sys_exit_memfd_create")
int memfd_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct memfd_calls_slot *s = inflight_get(memfd_calls);
	struct memfd_event *e;
	struct file *f;

	if (!s)
		return 0;
	e = &s->ev;
	e->ret = ctx->ret;
	f = e->ret >= 0 ? current_fd_file(e->ret) : NULL;
	if (f && read_kernel_name(e, f)) {
		e->name_source = MEMFD_NAME_SOURCE_KERNEL;
	} else {
		e->name_source = MEMFD_NAME_SOURCE_CALLER;
		read_user_string(e->name, sizeof(e->name), (void *)s->args[0], &e->hdr.flags);
	}
	emit_record(&e->hdr, sizeof(*e));
	inflight_end(memfd_calls);
	return 0;
}
