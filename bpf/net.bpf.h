/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * Sockets from kernel memory: a task's fd to its struct sock, and a sock's
 * addresses.  Network sensors read what the kernel holds, never the
 * caller's sockaddr in user memory (which it may change after the call).
 */
#ifndef __VIGIL_NET_BPF_H
#define __VIGIL_NET_BPF_H

#include <vmlinux.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "core_fixes.bpf.h"
#include "net.h"

#define VIGIL_AF_INET	2
#define VIGIL_AF_INET6	10
#define VIGIL_S_IFMT	00170000
#define VIGIL_S_IFSOCK	0140000

/* The sock behind `fd` of `task`, or NULL if the fd is not a socket. */
static __always_inline struct sock *sock_from_fd(struct task_struct *task, int fd)
{
	struct file **fds;
	struct file *file = NULL;
	struct socket *sock;
	unsigned int max;

	if (fd < 0)
		return NULL;
	fds = BPF_CORE_READ(task, files, fdt, fd);
	max = BPF_CORE_READ(task, files, fdt, max_fds);
	if ((unsigned int)fd >= max || !fds)
		return NULL;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & VIGIL_S_IFMT) != VIGIL_S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	return sock ? BPF_CORE_READ(sock, sk) : NULL;
}

/* Family, protocol, ports and addresses as the sock holds them now. */
static __always_inline void read_sockaddrs(struct sock *sk, struct vigil_sockaddrs *a)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	__builtin_memset(a, 0, sizeof(*a));
	a->family = family;
	a->protocol = sock_protocol(sk);
	a->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	a->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	/* explicit sizes: BPF_CORE_READ_INTO into an array copies one element */
	if (family == VIGIL_AF_INET) {
		bpf_core_read(a->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(a->raddr, 4, &sk->__sk_common.skc_daddr);
	} else if (family == VIGIL_AF_INET6) {
		bpf_core_read(a->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(a->raddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

#endif /* __VIGIL_NET_BPF_H */
