// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * bashreadline sensor: every command line typed into an interactive bash
 * (bcc's bashreadline).
 *
 * A uretprobe on readline() in the bash binary (user space resolves the
 * symbol's file offset): when it returns, its return value is the line the
 * user entered, a malloc'd string in bash's memory.  NULL (end of input,
 * Ctrl-D) and empty lines are not reported: nothing was run.
 *
 * The probe fires in the bash process, so the header (pid, uid, comm...)
 * is the shell the line was typed into.
 */
#include "common.bpf.h"
#include <bpf/bpf_tracing.h>
#include "bashreadline.h"

VIGIL_RECORD(bashreadline_event);

/* Only this process (tgid); 0 = every bash.  Set by `vigil bashreadline -p`. */
const volatile __u32 targ_pid = 0;

/* The record (4 KiB of line) does not fit the 512-byte stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bashreadline_event);
} scratch SEC(".maps");

SEC("uretprobe")
int BPF_KRETPROBE(handle_readline_ret, const char *line)
{
	__u32 zero = 0;
	struct bashreadline_event *e;
	char next = 0;
	long n;

	if (!line)
		return 0;	/* EOF: no line */
	if (targ_pid && (bpf_get_current_pid_tgid() >> 32) != targ_pid)
		return 0;
	e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;
	n = bpf_probe_read_user_str(e->line, sizeof(e->line), line);
	/*
	 * n counts the NUL: 1 is an empty line (Enter alone).  Kernels before
	 * the fix of strncpy_from_user_nofault() for empty strings (Debian's
	 * 6.1 and 6.12 among them) return 0 for it instead: empty too, not an
	 * error (errors are negative).
	 */
	if (n == 1 || n == 0)
		return 0;
	fill_header(&e->hdr, VIGIL_EV_BASHREADLINE);
	if (n <= 0) {
		/*
		 * Unreadable: a uretprobe cannot fault pages in (rare, the line
		 * was just written).  Report that a line was entered, without
		 * its text, rather than nothing.
		 */
		e->line[0] = 0;
		n = 1;
		e->hdr.flags |= VIGIL_F_PARTIAL;
		stat_inc(VIGIL_EV_BASHREADLINE, VIGIL_STAT_PARTIAL);
	} else if (n >= BASHREADLINE_LINE_SIZE) {
		/* the buffer is full: cut if the string goes on */
		n = BASHREADLINE_LINE_SIZE;
		if (!bpf_probe_read_user(&next, 1, line + BASHREADLINE_LINE_SIZE - 1) && next)
			e->hdr.flags |= VIGIL_F_TRUNCATED;
	}
	/* the record ends after the NUL */
	output_event(&e->hdr, offsetof(struct bashreadline_event, line) + n);
	return 0;
}
