/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_BPF_H
#define __VIGIL_BPF_H

#include "vigil.h"
#ifndef __VMLINUX_H__
#include <linux/bpf.h>	/* user space: the UAPI enums the record is typed with */
#endif

#define BPF_ATTACH_TO_SIZE	64

/* Where prog_type, prog_name and attach_type were read. */
enum bpf_info_source {
	BPF_INFO_SOURCE_CALLER = 0,	/* the caller's bpf_attr at syscall exit: as passed */
	BPF_INFO_SOURCE_KERNEL = 1,	/* the kernel's program (or link) object, or its attr copy */
};

/*
 * One bpf(2) call that loads or attaches a program: BPF_PROG_LOAD,
 * BPF_PROG_ATTACH, BPF_LINK_CREATE, BPF_RAW_TRACEPOINT_OPEN; reported at
 * its return.  Other commands (map reads and updates, the bulk of bpf()
 * calls) leave the probe after one compare.  The header is the caller.
 *
 * `cmd`, `prog_type` and `attach_type` are typed with the kernel's own
 * UAPI enums, so they decode to their names (prog_load, kprobe,
 * trace_fentry...).
 */
struct bpf_event {
	struct vigil_header hdr;
	__s32 ret;				/* the new fd, 0, or -errno */
	enum bpf_cmd cmd;
	enum bpf_prog_type prog_type;
	enum bpf_attach_type attach_type;	/* expected (load) or requested (attach) */
	enum bpf_info_source source;
	__u32 prog_id;				/* the program's id (bpftool prog show id N); 0 unknown */
	__s32 target_fd;			/* attach: the target (a cgroup fd, an ifindex...) */
	__u32 attach_flags;
	char prog_name[16];			/* BPF_OBJ_NAME_LEN */
	char attach_to[BPF_ATTACH_TO_SIZE];	/* fentry/LSM...: the kernel function; raw_tp: the tracepoint */
	__u32 by_vigil;				/* 1: the caller is the Vigil agent that loaded this sensor */
	__u32 __pad;
};

#endif /* __VIGIL_BPF_H */
