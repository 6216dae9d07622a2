// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * uring-open PATH: open PATH read-only through io_uring's IORING_OP_OPENAT,
 * never calling an open syscall (the evasion an open sensor on the open
 * calls' returns cannot see), read a byte, and print "<fd> <result>".
 * Raw syscalls: no liburing on the build host.  Exit 2 when io_uring is
 * unavailable (disabled by sysctl, or not built), 1 on other errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static int uring_setup(unsigned entries, struct io_uring_params *p)
{
	return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int uring_enter(int fd, unsigned submit, unsigned wait, unsigned flags)
{
	return (int)syscall(__NR_io_uring_enter, fd, submit, wait, flags, NULL, 0);
}

int main(int argc, char **argv)
{
	struct io_uring_params p;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqe;
	unsigned *sq_tail, *sq_array, *cq_head, *cq_tail;
	void *sq, *cq;
	char byte;
	int ring, res;

	if (argc != 2) {
		fprintf(stderr, "usage: uring-open PATH\n");
		return 1;
	}
	memset(&p, 0, sizeof(p));
	ring = uring_setup(4, &p);
	if (ring < 0) {
		fprintf(stderr, "uring-open: io_uring_setup: %s\n", strerror(errno));
		return errno == ENOSYS || errno == EPERM ? 2 : 1;
	}
	sq = mmap(NULL, p.sq_off.array + p.sq_entries * sizeof(unsigned), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
	cq = mmap(NULL, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe),
		  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
	sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
		perror("uring-open: mmap");
		return 1;
	}
	sq_tail = (unsigned *)((char *)sq + p.sq_off.tail);
	sq_array = (unsigned *)((char *)sq + p.sq_off.array);
	cq_head = (unsigned *)((char *)cq + p.cq_off.head);
	cq_tail = (unsigned *)((char *)cq + p.cq_off.tail);

	memset(&sqes[0], 0, sizeof(sqes[0]));
	sqes[0].opcode = IORING_OP_OPENAT;
	sqes[0].fd = AT_FDCWD;
	sqes[0].addr = (unsigned long)argv[1];
	sqes[0].open_flags = O_RDONLY;
	sq_array[0] = 0;
	__atomic_store_n(sq_tail, *sq_tail + 1, __ATOMIC_RELEASE);

	if (uring_enter(ring, 1, 1, IORING_ENTER_GETEVENTS) < 0) {
		fprintf(stderr, "uring-open: io_uring_enter: %s\n", strerror(errno));
		return 1;
	}
	if (__atomic_load_n(cq_tail, __ATOMIC_ACQUIRE) == *cq_head) {
		fprintf(stderr, "uring-open: no completion\n");
		return 1;
	}
	cqe = (struct io_uring_cqe *)((char *)cq + p.cq_off.cqes) +
	      (*cq_head & *(unsigned *)((char *)cq + p.cq_off.ring_mask));
	res = cqe->res;
	__atomic_store_n(cq_head, *cq_head + 1, __ATOMIC_RELEASE);
	if (res >= 0 && read(res, &byte, 1) < 0)
		perror("uring-open: read");
	printf("%d %d\n", res, res < 0 ? res : 0);
	return 0;
}
