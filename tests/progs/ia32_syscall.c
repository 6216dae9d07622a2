// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * A 64-bit process making a 32-bit syscall (int $0x80, the ia32 table, on
 * kernels with IA32_EMULATION): the number is the i386 one, so a sensor
 * that compares orig_ax against the x86_64 numbers misses it (or mistakes
 * an unrelated i386 call for a module call).
 *
 *   ia32-syscall [-r N] [-x] NR [ARG...]   (up to 3: ebx, ecx, edx)
 * An ARG "s:TEXT" is TEXT copied below 4 GiB (its address is passed),
 * anything else a number.  With -r, the call is made N times (one
 * process image, the same call); with -x, the program then execs itself
 * to make the call once more (the same pid, a new image).  Prints the raw
 * return value (-errno) of the last call.
 * x86_64 only.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static unsigned int low_copy(const char *s)
{
	char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT,
		       -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	strncpy(p, s, 4095);
	return (unsigned int)(unsigned long)p;
}

static unsigned int arg(int argc, char **argv, int i)
{
	if (i >= argc)
		return 0;
	if (!strncmp(argv[i], "s:", 2))
		return low_copy(argv[i] + 2);
	return strtoul(argv[i], NULL, 0);
}

int main(int argc, char **argv)
{
#if defined(__x86_64__)
	unsigned int nr, a1, a2, a3;
	int ret = 0, repeat = 1;

	int again = 0;

	for (;;) {
		if (argc > 3 && !strcmp(argv[1], "-r")) {
			repeat = atoi(argv[2]);
			argv += 2;
			argc -= 2;
		} else if (argc > 2 && !strcmp(argv[1], "-x")) {
			again = 1;
			argv[1] = argv[0];	/* the exec's argv: the rest, without -x */
			argv += 1;
			argc -= 1;
		} else {
			break;
		}
	}
	if (argc < 2) {
		fprintf(stderr, "usage: ia32-syscall [-r N] NR [ARG...]\n");
		return 2;
	}
	nr = strtoul(argv[1], NULL, 0);
	a1 = arg(argc, argv, 2);
	a2 = arg(argc, argv, 3);
	a3 = arg(argc, argv, 4);
	for (int i = 0; i < repeat; i++)
		__asm__ volatile("int $0x80"
				 : "=a"(ret)
				 : "a"(nr), "b"(a1), "c"(a2), "d"(a3)
				 : "memory", "r8", "r9", "r10", "r11");
	if (again) {
		execv("/proc/self/exe", argv);
		perror("execv");
		return 2;
	}
	printf("%d\n", ret);
	return 0;
#else
	fprintf(stderr, "ia32-syscall: x86_64 only\n");
	return 2;
#endif
}
