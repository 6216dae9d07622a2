/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
#ifndef __VIGIL_NET_H
#define __VIGIL_NET_H

/*
 * The addresses of one socket, shared by every network record (user space
 * flattens nested structs: these appear as top-level fields).  Ports are in
 * host order; an IPv4 address fills the first 4 bytes of its array.
 */
struct vigil_sockaddrs {
	__u16 family;		/* AF_INET (2) or AF_INET6 (10) */
	__u16 protocol;		/* IPPROTO_TCP (6), IPPROTO_UDP (17), ... */
	__u16 lport;
	__u16 rport;
	__u8 laddr[16];
	__u8 raddr[16];
};

#endif /* __VIGIL_NET_H */
