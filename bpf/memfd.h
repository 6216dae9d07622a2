/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_MEMFD_H
#define __VIGIL_MEMFD_H

#include "vigil.h"

#define MEMFD_NAME_SIZE 256	/* "memfd:" + MFD_NAME_MAX_LEN (249) + NUL */

enum memfd_name_source {
	MEMFD_NAME_SOURCE_KERNEL = 0,	/* the new file's dentry name, as /proc/PID/fd shows it */
	MEMFD_NAME_SOURCE_CALLER = 1,	/* a failed call: the name as passed by the caller */
};

/*
 * One memfd_create(2), reported at its return: an anonymous file in
 * memory, the usual first step of a fileless exec.  The header is the
 * caller.  `name` is without the kernel's "memfd:" prefix.
 */
struct memfd_event {
	struct vigil_header hdr;
	__s32 ret;			/* the new fd, or -errno */
	__u32 mfd_flags;		/* MFD_CLOEXEC, MFD_ALLOW_SEALING, MFD_EXEC... */
	char name[MEMFD_NAME_SIZE];
	enum memfd_name_source name_source;
	__u32 __pad;
};

#endif /* __VIGIL_MEMFD_H */
