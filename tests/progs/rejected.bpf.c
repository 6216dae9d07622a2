/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * A sensor object every verifier refuses (a map value used without the
 * NULL check), to prove that one sensor the kernel rejects is skipped and
 * named while the others run (tests/test_skip_unloadable.py).  It has the
 * shared ring and counters of a real sensor, so only the verifier stops it.
 */
#include "common.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int rejected_getppid(void *ctx)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&counts, &key);

	*n += 1;	/* no NULL check: "invalid mem access 'map_value_or_null'" */
	return 0;
}
