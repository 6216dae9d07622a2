// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Feature probes: one trivial program per attach type.  `vigil doctor` and
 * every sensor's attach choice ask whether each of these loads and attaches
 * on the running kernel (user space enables one program at a time).
 */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_ring SEC(".maps");

__u64 hits;

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe_tracepoint(void *ctx) { hits++; return 0; }

SEC("raw_tp/sys_enter")
int probe_raw_tp(void *ctx) { hits++; return 0; }

SEC("tp_btf/sched_process_fork")
int BPF_PROG(probe_tp_btf, struct task_struct *parent, struct task_struct *child)
{ hits++; return 0; }

SEC("fentry/do_nanosleep")
int BPF_PROG(probe_fentry) { hits++; return 0; }

SEC("kprobe/do_nanosleep")
int probe_kprobe(void *ctx) { hits++; return 0; }

SEC("lsm/file_open")
int BPF_PROG(probe_lsm, struct file *file) { return 0; }

/* uprobe/usdt targets are given at attach time */
SEC("uprobe")
int probe_uprobe(void *ctx) { hits++; return 0; }

SEC("usdt")
int BPF_USDT(probe_usdt, long i) { hits += i; return 0; }

SEC("cgroup/connect4")
int probe_cgroup(struct bpf_sock_addr *ctx) { return 1; }

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe_ringbuf(void *ctx)
{
	__u64 *e = bpf_ringbuf_reserve(&probe_ring, sizeof(*e), 0);

	if (e)
		bpf_ringbuf_submit(e, 0);
	return 0;
}
