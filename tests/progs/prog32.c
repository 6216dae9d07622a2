// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * A real 32-bit program (an i386 ELF, no libc: built -m32 -nostdlib): one
 * int $0x80 getpid, then exit_group(0).  For the syscall32 sensor's
 * `mode32`: a 32-bit program makes every call through the ia32 table.
 * Elsewhere (no -m32) a stub that says so.
 */
#if defined(__i386__)
static inline int sys1(int nr, int a)
{
	int ret;

	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a) : "memory");
	return ret;
}

void _start(void)
{
	sys1(20, 0);	/* getpid */
	sys1(252, 0);	/* exit_group(0) */
	for (;;)
		;
}
#else
#include <stdio.h>

int main(void)
{
	fputs("prog32: built for x86_64 hosts only (-m32)\n", stderr);
	return 2;
}
#endif
