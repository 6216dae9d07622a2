/*
 * failexec_storm: what any unprivileged user can do to flood an exec
 * monitor without creating a single process: execve() a path that does
 * not exist, as fast as possible, for a given time.  Each call fails at
 * once (ENOENT) but is a traced exec attempt with its argv.
 *
 *   failexec-storm SECONDS
 *
 * Prints "failed_execs=N" at the end.  Exit 0, or 1 on a usage error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	char *av[] = {"/nonexistent/vigil-flood", "an-argument", "another-argument", NULL};
	char *env[] = {NULL};
	double end, seconds = argc == 2 ? atof(argv[1]) : 0;
	long n = 0, other = 0;

	if (!(seconds > 0 && seconds <= 3600)) {
		fprintf(stderr, "usage: failexec-storm SECONDS (0 < SECONDS <= 3600)\n");
		return 1;
	}
	end = now() + seconds;
	while (now() < end) {
		for (int i = 0; i < 1000; i++, n++)
			if (execve(av[0], av, env) < 0 && errno != ENOENT)
				other++;
	}
	printf("failed_execs=%ld other_errors=%ld\n", n, other);
	return 0;
}
