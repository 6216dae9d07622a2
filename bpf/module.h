/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_MODULE_H
#define __VIGIL_MODULE_H

#include "vigil.h"

#define MODULE_NAME_SIZE	64	/* the kernel's MODULE_NAME_LEN is 56 */
#define MODULE_PATH_SIZE	256
#define MODULE_PARAMS_SIZE	128

/* Which call; user space shows init_module, finit_module, delete_module. */
enum module_op {
	MODULE_OP_INIT_MODULE = 0,
	MODULE_OP_FINIT_MODULE = 1,
	MODULE_OP_DELETE_MODULE = 2,
	MODULE_OP_MODULE_REQUEST = 3,	/* the kernel asks modprobe for a module it lacks
				 * (request_module: an unknown socket family, a
				 * device major...), on behalf of this task */
};

/* Where `name` came from. */
enum module_name_source {
	MODULE_NAME_SOURCE_NONE = 0,	/* not known: the kernel never parsed the module */
	MODULE_NAME_SOURCE_KERNEL = 1,	/* module:module_load: the name the kernel loaded;
					 * module_request: the name it asks for */
	MODULE_NAME_SOURCE_CALLER = 2,	/* delete_module's argument, as passed by the caller */
};

/* Where finit_module's `path` was resolved. */
enum module_path_source {
	MODULE_PATH_NONE = 0,		/* no file: init_module, delete_module, a request */
	MODULE_PATH_FD = 1,		/* the file behind the fd at the call's entry */
	MODULE_PATH_READ = 2,		/* the file the kernel read the module from
					 * (kernel_read_file LSM hook): what a thread
					 * swapping the fd after entry cannot change */
};

/*
 * One init_module, finit_module or delete_module call, reported at its
 * return with the result (-ENOSYS on a kernel built without modules), or
 * a module the kernel requests (ret 0, at the request).  The header is
 * the caller at entry.
 */
struct module_load_event {
	struct vigil_header hdr;
	__s32 ret;			/* 0, or -errno */
	enum module_op op;
	enum module_name_source name_source;
	__s32 fd;			/* finit_module's descriptor; -1 otherwise */
	__u32 call_flags;		/* finit_module / delete_module flags argument */
	__u32 taints;			/* module->taints as module:module_load saw them; 0 unknown */
	__u64 len;			/* init_module: size of the image passed */
	char name[MODULE_NAME_SIZE];
	char path[MODULE_PATH_SIZE];	/* finit_module: the file behind fd, resolved at entry */
	char params[MODULE_PARAMS_SIZE];/* parameter string, as passed by the caller */
	__u32 params_read;		/* 1: params was read (0 for delete_module) */
	enum module_path_source path_source;
};

#endif /* __VIGIL_MODULE_H */
