/*
 * open_overhead workload: N times open(PATH_i, O_RDONLY) + close, cycling
 * through the paths given, as fast as one process can, timed with
 * CLOCK_MONOTONIC.
 *
 *   open_overhead_workload N PATH...
 *
 * Prints one line:  opens=N failed=F seconds=S rate=R cpu_rate=C pid=P
 * (failed: opens that returned -1, e.g. EACCES; they are timed too;
 * cpu_rate: opens per second of this process's own CPU time, which other
 * tenants of a shared machine do not steal).
 * Exit 1 on a usage error.  Built at run time by bench/open_overhead.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s N PATH...\n", argv[0]);
		return 1;
	}
	char *end;
	long n = strtol(argv[1], &end, 10);
	if (*end || n < 1) {
		fprintf(stderr, "%s: N must be a positive integer\n", argv[0]);
		return 1;
	}
	int npaths = argc - 2;
	long failed = 0;
	struct timespec t0, t1, c0, c1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
	for (long i = 0; i < n; i++) {
		int fd = open(argv[2 + i % npaths], O_RDONLY);
		if (fd < 0)
			failed++;
		else
			close(fd);
	}
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	double cpu = (c1.tv_sec - c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) / 1e9;
	printf("opens=%ld failed=%ld seconds=%.6f rate=%.1f cpu_rate=%.1f pid=%d\n", n, failed, s,
	       n / s, n / cpu, (int)getpid());
	return 0;
}
