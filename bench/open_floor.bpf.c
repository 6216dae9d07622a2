// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * bench/open_overhead's "floor": empty programs where the open sensor
 * hooks on a kernel without fexit/BPF-LSM (the open calls' exit
 * tracepoints).  What they cost is the price of any program there: the
 * syscall tracing slow path and the tracepoint's record, before a single
 * instruction of Vigil's runs.
 */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>

SEC("tracepoint/syscalls/sys_exit_openat")
int floor_openat(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
