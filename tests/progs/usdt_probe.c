/* A program with one USDT probe (vigil:probe): the target for `vigil doctor`'s
 * USDT check and for the USDT tests.  Fires the probe N times (argv[1]) with
 * arg1 = the iteration number. */
#include <stdlib.h>
#include <sys/sdt.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 0;

	for (long i = 0; i < n; i++)
		DTRACE_PROBE1(vigil, probe, i);
	return 0;
}
