/* Target for the uprobe/uretprobe tests (vigil argdist): calls
 * vigil_target(i % 3, i) N times (argv[1]), which returns 10 * a + 7, and
 * vigil_greet(name) with "alpha" for even i and "beta" for odd i.  Known
 * arguments and return values make exact counts checkable.  With a second
 * argument it waits for a line on stdin first (so a test can attach to its
 * pid before the calls). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* noipa: no inlining, cloning or signature change: the symbol is the function */
__attribute__((noipa)) int vigil_target(int a, long b)
{
	return 10 * a + 7 + (int)(b & 0);
}

__attribute__((noipa)) size_t vigil_greet(const char *name)
{
	return strlen(name);
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 0;
	/* on the stack: resident when the probe reads them (a first touch of
	 * .rodata would fault, and probes may not fault pages in) */
	char alpha[8] = "alpha", beta[8] = "beta";
	long sum = 0;
	char line[8];

	if (argc > 2 && !fgets(line, sizeof(line), stdin))
		return 1;
	for (long i = 0; i < n; i++) {
		sum += vigil_target(i % 3, i);
		sum += vigil_greet(i % 2 ? beta : alpha);
	}
	printf("%ld\n", sum);
	return 0;
}
