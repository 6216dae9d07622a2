// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Kernel modules: every init_module, finit_module and delete_module call
 * with its result, and the name the kernel loaded.
 *
 *   syscalls:sys_enter/exit_{,f}init_module, _delete_module
 *                          one program per call; these tracepoints exist
 *                          only on kernels built with module support
 *   raw_tp sys_exit, or tracepoint raw_syscalls:sys_exit
 *                          every syscall's return passes here: the first
 *                          test is the syscall number, so all others
 *                          leave after one compare.  Catches attempts on
 *                          kernels without module support too (-ENOSYS),
 *                          where an attempt is itself the news
 *   module:module_load     inside a successful load: the module's name
 *                          and taints from the kernel's struct module,
 *                          added to the caller's in-flight record
 *   lsm/kernel_read_file   where BPF-LSM works: the file finit_module
 *                          really reads, replacing the entry's view of
 *                          the fd (a thread can dup2 a decoy over the fd
 *                          between the entry probe and the kernel's fdget)
 *   module:module_request, or lsm/kernel_module_request
 *                          a module the kernel asks modprobe for on a
 *                          task's behalf (any user can make it: a socket
 *                          of an unloaded family), the classic way to get
 *                          a vulnerable module loaded
 *
 * finit_module's file is resolved from the descriptor at entry (the
 * kernel's struct file, not a path the caller wrote).  The parameter
 * string and delete_module's name are user memory, read at exit, when
 * the kernel has copied them (pages faulted in): "as passed by the
 * caller", which a racing thread could have changed in between.
 */
#include "common.bpf.h"
#include "syscall.bpf.h"
#include "path.bpf.h"
#include <bpf/bpf_tracing.h>
#include "module.h"
#include "syscall32.h"

VIGIL_RECORD(module_load_event);
VIGIL_RECORD(syscall32_event);
enum syscall32_abi *__vigil_enum_syscall32_abi __attribute__((unused));
enum module_op *__vigil_enum_module_op __attribute__((unused));
enum module_name_source *__vigil_enum_module_name_source __attribute__((unused));
enum module_path_source *__vigil_enum_module_path_source __attribute__((unused));

VIGIL_INFLIGHT(module_calls, module_load_event, 1024);

/* ctx: a sys_enter record, or anything with the arguments in args[] */
#define enter(op, ctx, nargs) \
	module_enter(op, inflight_start(module_calls, VIGIL_EV_MODULE_LOAD, ctx, nargs))

static __always_inline int module_enter(enum module_op op, struct module_calls_slot *s)
{
	struct module_load_event *e;

	if (!s)
		return 0;
	e = &s->ev;
	e->op = op;
	e->fd = -1;
	switch (op) {
	case MODULE_OP_INIT_MODULE:	/* (void *image, unsigned long len, const char *params) */
		e->len = s->args[1];
		break;
	case MODULE_OP_FINIT_MODULE: {	/* (int fd, const char *params, int flags) */
		struct file *f;

		e->fd = (int)s->args[0];
		e->call_flags = (__u32)s->args[2];
		f = current_fd_file(e->fd);
		if (!f || read_path(BPF_CORE_READ(f, f_path.mnt), BPF_CORE_READ(f, f_path.dentry),
				    e->path, sizeof(e->path), &e->hdr.flags) < 0)
			e->hdr.flags |= VIGIL_F_PARTIAL;	/* bad fd: the call fails too */
		else
			e->path_source = MODULE_PATH_FD;
		break;
	}
	case MODULE_OP_DELETE_MODULE:	/* (const char *name, unsigned int flags) */
		e->call_flags = (__u32)s->args[1];
		break;
	case MODULE_OP_MODULE_REQUEST:		/* not a call: sent at once by module_requested() */
		break;
	}
	return 0;
}

static __always_inline int leave(long ret)
{
	struct module_calls_slot *s = inflight_get(module_calls);
	struct module_load_event *e;
	const void *params = NULL;

	if (!s)
		return 0;
	e = &s->ev;
	e->ret = ret;
	if (e->op == MODULE_OP_INIT_MODULE)
		params = (const void *)s->args[2];
	else if (e->op == MODULE_OP_FINIT_MODULE)
		params = (const void *)s->args[1];
	if (params)
		e->params_read = read_user_string(e->params, sizeof(e->params), params,
						  &e->hdr.flags);
	if (e->op == MODULE_OP_DELETE_MODULE &&
	    read_user_string(e->name, sizeof(e->name), (const void *)s->args[0], &e->hdr.flags))
		e->name_source = MODULE_NAME_SOURCE_CALLER;
	emit_record(&e->hdr, sizeof(*e));
	inflight_end(module_calls);
	return 0;
}

/* -- per-syscall tracepoints (kernels with module support) ----------------------- */
SEC("tracepoint/syscalls/sys_enter_init_module")
int module_init_enter(struct trace_event_raw_sys_enter *ctx)
{
	return enter(MODULE_OP_INIT_MODULE, ctx, 3);
}

SEC("tracepoint/syscalls/sys_enter_finit_module")
int module_finit_enter(struct trace_event_raw_sys_enter *ctx)
{
	return enter(MODULE_OP_FINIT_MODULE, ctx, 3);
}

SEC("tracepoint/syscalls/sys_enter_delete_module")
int module_delete_enter(struct trace_event_raw_sys_enter *ctx)
{
	return enter(MODULE_OP_DELETE_MODULE, ctx, 2);
}

SEC("tracepoint/syscalls/sys_exit_init_module")
int module_init_exit(struct trace_event_raw_sys_exit *ctx)
{
	return leave(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_finit_module")
int module_finit_exit(struct trace_event_raw_sys_exit *ctx)
{
	return leave(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_delete_module")
int module_delete_exit(struct trace_event_raw_sys_exit *ctx)
{
	return leave(ctx->ret);
}

/*
 * -- every syscall, filtered by number first -----------------------------------
 * Where the per-call tracepoints do not exist, hook the exit of every
 * syscall and leave after one compare of its number.  Exit only (one
 * hook, not two: each costs every syscall of the host): the caller's
 * saved user registers still hold the arguments there, and the record
 * is built and sent at once (its header is stamped at the return).
 */
struct raw_args {
	unsigned long args[6];
};

/*
 * A 32-bit syscall (int $0x80 from any process, or a 32-bit program, on
 * x86_64 with IA32_EMULATION): orig_ax holds the ia32 table's number,
 * where init_module is 128, delete_module 129, finit_module 350, and
 * 175/176/313 (x86_64's init/delete/finit_module) are rt_sigprocmask,
 * rt_sigpending and splice; the arguments are in bx, cx, dx.  Unchecked,
 * a module load that way went unseen, and any user could forge a module
 * call.  TS_COMPAT is what in_ia32_syscall() tests
 * (arch/x86/include/asm/thread_info.h).
 */
#define VIGIL_TS_COMPAT 0x0002
#define IA32_SYS_init_module 128
#define IA32_SYS_delete_module 129
#define IA32_SYS_finit_module 350

/* The first filter, at every syscall: a module call's number in either table. */
static __always_inline bool module_nr(long id)
{
	if (id == VIGIL_SYS_init_module || id == VIGIL_SYS_finit_module ||
	    id == VIGIL_SYS_delete_module)
		return true;
#if defined(__TARGET_ARCH_x86)
	return id == IA32_SYS_init_module || id == IA32_SYS_finit_module ||
	       id == IA32_SYS_delete_module;
#else
	return false;
#endif
}

static __always_inline bool ia32_syscall(void)
{
#if defined(__TARGET_ARCH_x86)
	struct task_struct *task = bpf_get_current_task_btf();

	return BPF_CORE_READ(task, thread_info.status) & VIGIL_TS_COMPAT;
#else
	return false;
#endif
}

static __always_inline int exit_only(struct pt_regs *regs, long id, long ret)
{
	struct raw_args a = {};
	enum module_op op;

	if (!module_nr(id))
		return 0;
#if defined(__TARGET_ARCH_x86)
	if (ia32_syscall()) {
		switch (id) {
		case IA32_SYS_init_module:
			op = MODULE_OP_INIT_MODULE;
			break;
		case IA32_SYS_finit_module:
			op = MODULE_OP_FINIT_MODULE;
			break;
		case IA32_SYS_delete_module:
			op = MODULE_OP_DELETE_MODULE;
			break;
		default:
			return 0;	/* a 32-bit call with a 64-bit module call's number */
		}
		a.args[0] = (__u32)BPF_CORE_READ(regs, bx);
		a.args[1] = (__u32)BPF_CORE_READ(regs, cx);
		a.args[2] = (__u32)BPF_CORE_READ(regs, dx);
		enter(op, &a, 3);
		return leave(ret);
	}
#endif
	switch (id) {
	case VIGIL_SYS_init_module:
		op = MODULE_OP_INIT_MODULE;
		break;
	case VIGIL_SYS_finit_module:
		op = MODULE_OP_FINIT_MODULE;
		break;
	case VIGIL_SYS_delete_module:
		op = MODULE_OP_DELETE_MODULE;
		break;
	default:
		return 0;
	}
	a.args[0] = PT_REGS_PARM1_CORE_SYSCALL(regs);
	a.args[1] = PT_REGS_PARM2_CORE_SYSCALL(regs);
	a.args[2] = PT_REGS_PARM3_CORE_SYSCALL(regs);
	enter(op, &a, 3);
	return leave(ret);
}

/*
 * -- 32-bit syscalls (the syscall32 sensor) -------------------------------------
 * The every-syscall program above is the host's only one: a second
 * program on sys_exit would cost every syscall of the host again (about
 * 40 ns each, bench/open_overhead), so the 32-bit calls are watched from
 * it too.  User space sets what it does from the hooks it chose:
 * `exit_modules` where the module_load sensor has no per-call tracepoints,
 * `exit_syscall32` for the syscall32 sensor.
 */
const volatile __u8 exit_modules = 0;
const volatile __u8 exit_syscall32 = 0;
const volatile __u8 modules_wanted = 0;	/* the module_load sensor is loaded */

#define VIGIL_X32_SYSCALL_BIT 0x40000000	/* arch/x86/include/uapi/asm/unistd.h */
#define VIGIL_ENOSYS 38				/* include/uapi/asm-generic/errno.h */

/*
 * Whether the process image is a 32-bit (i386) program: the exec of an
 * ia32 ELF sets MM_CONTEXT_UPROBE_IA32, bit 0 of mm->context.flags
 * (arch/x86/include/asm/mmu.h; bit 0 too where flags is an unsigned short
 * of BIT() masks, before 6.4), and every exec makes a new mm.  Not the
 * user code segment at the call: a 64-bit program can far-jump to the
 * 32-bit segment (0x23) itself and make its int $0x80 calls from there.
 * The first byte is read: the bit is in it whatever the field's width.
 */
static __always_inline bool ia32_image(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u8 low = 0;

	bpf_core_read(&low, sizeof(low), &task->mm->context.flags);
	return low & 1;
}

/* The first call of each number, per process image: a 32-bit program makes
 * every call this way, an evading 64-bit one the few it needs hidden. */
struct syscall32_key {
	__u64 start_ns;		/* process start, CLOCK_BOOTTIME */
	__u64 exec_id;		/* task->self_exec_id: a new image after exec */
	__u32 pid;
	__s32 nr;
	__u32 abi;
	__u32 __pad;
};

/* LRU: a forgotten key costs one more record, never a lost one. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct syscall32_key);
	__type(value, __u8);
} syscall32_seen SEC(".maps");

static __always_inline int syscall32_exit(struct pt_regs *regs, long id, long ret,
					  enum syscall32_abi abi)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct syscall32_key key = {};
	struct syscall32_event *e;
	__s32 nr = abi == SYSCALL32_ABI_X32 ? id & ~VIGIL_X32_SYSCALL_BIT : id;

	key.pid = bpf_get_current_pid_tgid() >> 32;
	/* a number the kernel has no call for answers -ENOSYS (so do x32
	 * calls where x32 is off): one key for all of them, the first one
	 * recorded; else each of the 2^32 numbers is a record of its own, a
	 * flood at the will of any process */
	key.nr = ret == -VIGIL_ENOSYS ? -VIGIL_ENOSYS : nr;
	key.abi = abi;
	key.start_ns = task_start_boottime(BPF_CORE_READ(task, group_leader));
	key.exec_id = BPF_CORE_READ(task, self_exec_id);
	if (seen_before(&syscall32_seen, &key))
		return 0;
	e = reserve_event(VIGIL_EV_SYSCALL32, sizeof(*e));
	if (!e)
		return 0;
	fill_header(&e->hdr, VIGIL_EV_SYSCALL32);
	e->ret = ret;
	e->nr = nr;
	e->abi = abi;
	e->ia32_syscall = abi == SYSCALL32_ABI_IA32 ? nr : -1;
	e->x32_syscall = abi == SYSCALL32_ABI_X32 ? nr : -1;
	e->mode32 = ia32_image();
	__builtin_memset(e->__pad, 0, sizeof(e->__pad));
	if (abi == SYSCALL32_ABI_IA32) {
		e->arg0 = (__u32)BPF_CORE_READ(regs, bx);
		e->arg1 = (__u32)BPF_CORE_READ(regs, cx);
		e->arg2 = (__u32)BPF_CORE_READ(regs, dx);
		e->arg3 = (__u32)BPF_CORE_READ(regs, si);
		e->arg4 = (__u32)BPF_CORE_READ(regs, di);
		e->arg5 = (__u32)BPF_CORE_READ(regs, bp);
	} else {
		e->arg0 = BPF_CORE_READ(regs, di);
		e->arg1 = BPF_CORE_READ(regs, si);
		e->arg2 = BPF_CORE_READ(regs, dx);
		e->arg3 = BPF_CORE_READ(regs, r10);
		e->arg4 = BPF_CORE_READ(regs, r8);
		e->arg5 = BPF_CORE_READ(regs, r9);
	}
	submit_event(&e->hdr, sizeof(*e));
	return 0;
}

/*
 * At every syscall's return: the 32-bit calls first (x32's bit is in the
 * number; ia32's is TS_COMPAT, one load of the task), then a module
 * call's number.  Most syscalls leave after those compares.
 */
static __always_inline int every_exit(struct pt_regs *regs, long id, long ret)
{
#if defined(__TARGET_ARCH_x86)
	if (exit_syscall32) {
		/* id -1: no syscall (a tracer's or seccomp's skip), not an x32 call */
		if (id >= 0 && (id & VIGIL_X32_SYSCALL_BIT)) {
			syscall32_exit(regs, id, ret, SYSCALL32_ABI_X32);
		} else if (bpf_get_current_task_btf()->thread_info.status & VIGIL_TS_COMPAT) {
			syscall32_exit(regs, id, ret, SYSCALL32_ABI_IA32);
			/* the module sensor's per-call tracepoints skip 32-bit calls
			 * too: its ia32 module calls are made here */
			if (modules_wanted && !exit_modules && module_nr(id))
				return exit_only(regs, id, ret);
		}
	}
#endif
	if (!exit_modules || !module_nr(id))
		return 0;
	return exit_only(regs, id, ret);
}

/*
 * tp_btf: `regs` is a typed pointer, so its syscall number is one load,
 * not a helper call: this runs at every syscall of the host (the open
 * loop of bench/open_overhead: about 0.06 of its rate, against 0.10+ for
 * raw_tp with bpf_probe_read_kernel).
 */
SEC("tp_btf/sys_exit")
int BPF_PROG(module_btf_exit, struct pt_regs *regs, long ret)
{
#if defined(__TARGET_ARCH_x86)
	long id = regs->orig_ax;
#elif defined(__TARGET_ARCH_arm64)
	long id = regs->syscallno;
#else
	long id = -1;
#endif

	return every_exit(regs, id, ret);
}

/* raw_tp: no perf record is built per call, unlike the classic tracepoint */
SEC("raw_tp/sys_exit")
int BPF_PROG(module_rawtp_exit, struct pt_regs *regs, long ret)
{
	return every_exit(regs, regs_syscall_nr(regs), ret);
}

SEC("tracepoint/raw_syscalls/sys_exit")
int module_raw_exit(struct trace_event_raw_sys_exit *ctx)
{
	return every_exit((struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf()),
			  ctx->id, ctx->ret);
}

/*
 * -- module:module_load ------------------------------------------------------------
 * Its format (include/trace/events/module.h) is
 *   unsigned int taints; __string(name, mod->name)
 * vmlinux.h of a kernel without modules lacks the struct: declared here.
 */
struct module_load_tp {
	__u64 __common;
	__u32 taints;
	__u32 data_loc_name;
};

SEC("tracepoint/module/module_load")
int handle_module_load(struct module_load_tp *ctx)
{
	struct module_calls_slot *s = inflight_get(module_calls);
	struct module_load_event *e;
	__u32 loc = ctx->data_loc_name & 0xffff;

	if (!s)
		return 0;	/* a load outside a traced call (or its slot was lost) */
	e = &s->ev;
	e->taints = ctx->taints;
	if (bpf_probe_read_kernel_str(e->name, sizeof(e->name), (void *)ctx + loc) > 0)
		e->name_source = MODULE_NAME_SOURCE_KERNEL;
	return 0;
}

/*
 * -- the file the kernel reads: lsm/kernel_read_file -----------------------------
 * In the caller's context, inside finit_module, with the struct file the
 * kernel took from the fd.  Observes only (returns 0).
 */
SEC("lsm/kernel_read_file")
int BPF_PROG(module_lsm_read_file, struct file *file, enum kernel_read_file_id id, bool contents)
{
	struct module_calls_slot *s;
	struct module_load_event *e;
	__u32 flags = 0;

	if (id != bpf_core_enum_value(enum kernel_read_file_id, READING_MODULE))
		return 0;
	s = inflight_get(module_calls);
	if (!s || s->ev.op != MODULE_OP_FINIT_MODULE)
		return 0;
	e = &s->ev;
	if (read_path(BPF_CORE_READ(file, f_path.mnt), BPF_CORE_READ(file, f_path.dentry),
		      e->path, sizeof(e->path), &flags) >= 0) {
		e->path_source = MODULE_PATH_READ;
		e->hdr.flags = (e->hdr.flags & ~VIGIL_F_PARTIAL) | flags;
	}
	return 0;
}

/* -- modules the kernel requests ----------------------------------------------------- */
static __always_inline int module_requested(const char *name)
{
	struct module_load_event *e = reserve_event(VIGIL_EV_MODULE_LOAD, sizeof(*e));

	if (!e)
		return 0;
	fill_header(&e->hdr, VIGIL_EV_MODULE_LOAD);
	e->ret = 0;
	e->op = MODULE_OP_MODULE_REQUEST;
	e->fd = -1;
	e->call_flags = 0;
	e->taints = 0;
	e->len = 0;
	e->path[0] = 0;
	e->params[0] = 0;
	e->params_read = 0;
	e->path_source = MODULE_PATH_NONE;
	e->name_source = MODULE_NAME_SOURCE_NONE;
	if (bpf_probe_read_kernel_str(e->name, sizeof(e->name), name) > 0)
		e->name_source = MODULE_NAME_SOURCE_KERNEL;
	else
		e->hdr.flags |= VIGIL_F_PARTIAL;
	submit_event(&e->hdr, sizeof(*e));
	return 0;
}

/*
 * include/trace/events/module.h:
 *   unsigned long ip; bool wait; __string(name, name)
 * (declared here: the build's vmlinux.h may come from a kernel without modules)
 */
struct module_request_tp {
	__u64 __common;
	__u64 ip;
	__u8 wait;
	__u8 __pad[3];
	__u32 data_loc_name;
};

SEC("tracepoint/module/module_request")
int handle_module_request(struct module_request_tp *ctx)
{
	return module_requested((void *)ctx + (ctx->data_loc_name & 0xffff));
}

SEC("lsm/kernel_module_request")
int BPF_PROG(module_lsm_request, char *kmod_name)
{
	return module_requested(kmod_name);
}
