// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * A 64-bit program that far-jumps to the 32-bit user code segment (0x23)
 * and makes one int $0x80 call from there, then comes back to 64-bit mode
 * (0x33): at the call, its user CS is the one a 32-bit program has, though
 * its image is a 64-bit ELF.  Built -no-pie: code and the stack used in
 * 32-bit mode lie below 4 GiB.
 *
 *   farjump32 NR [ARG]   prints the raw return value (-errno)
 * x86_64 only.
 */
#include <stdio.h>
#include <stdlib.h>

#if defined(__x86_64__)
unsigned char stack32[16384] __attribute__((aligned(16)));
unsigned long saved_rsp, saved_rbp;
unsigned int call_nr, call_arg, call_ret;

static void call32(void)
{
	__asm__ volatile(
		"mov %%rsp, saved_rsp(%%rip)\n\t"
		"mov %%rbp, saved_rbp(%%rip)\n\t"
		"lea stack32+16384(%%rip), %%rsp\n\t"
		"pushq $0x23\n\t"
		"lea 1f(%%rip), %%rax\n\t"
		"pushq %%rax\n\t"
		"lretq\n\t"
		".code32\n"
		"1:\n\t"
		"movl %%ss:call_nr, %%eax\n\t"
		"movl %%ss:call_arg, %%ebx\n\t"
		"xorl %%ecx, %%ecx\n\t"
		"xorl %%edx, %%edx\n\t"
		"int $0x80\n\t"
		"movl %%eax, %%ss:call_ret\n\t"
		"pushl $0x33\n\t"
		"pushl $2f\n\t"
		"lretl\n\t"
		".code64\n"
		"2:\n\t"
		"mov saved_rsp(%%rip), %%rsp\n\t"
		"mov saved_rbp(%%rip), %%rbp\n\t"
		:
		:
		: "memory", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11",
		  "r12", "r13", "r14", "r15");
}
#endif

int main(int argc, char **argv)
{
#if defined(__x86_64__)
	if (argc < 2) {
		fprintf(stderr, "usage: farjump32 NR [ARG]\n");
		return 2;
	}
	call_nr = strtoul(argv[1], NULL, 0);
	call_arg = argc > 2 ? strtoul(argv[2], NULL, 0) : 0;
	call32();
	printf("%d\n", (int)call_ret);
	return 0;
#else
	fprintf(stderr, "farjump32: x86_64 only\n");
	return 2;
#endif
}
