/*
 * exec_storm workload: N times vfork (or fork) + execve(PATH) + waitpid,
 * as fast as one process can, timed with CLOCK_MONOTONIC.
 *
 *   exec_storm_workload N [PATH [vfork|fork]]     (default /bin/true, vfork)
 *
 * Prints one line:  execs=N seconds=S rate=R pid=P
 * (P is this process: the parent, so the ppid, of every exec'd child).
 * Exit 1 on a usage error, 2 if any child failed to exec or exited non-zero.
 *
 * Built at run time by bench/exec_storm into build/bench/.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: %s N [PATH [vfork|fork]]\n", argv[0]);
		return 1;
	}
	char *end;
	long n = strtol(argv[1], &end, 10);
	if (*end || n < 1) {
		fprintf(stderr, "%s: N must be a positive integer\n", argv[0]);
		return 1;
	}
	const char *path = argc > 2 ? argv[2] : "/bin/true";
	int use_fork = argc > 3 && strcmp(argv[3], "fork") == 0;
	if (argc > 3 && !use_fork && strcmp(argv[3], "vfork") != 0) {
		fprintf(stderr, "%s: mode must be vfork or fork\n", argv[0]);
		return 1;
	}
	const char *base = strrchr(path, '/');
	char *child_argv[] = {(char *)(base ? base + 1 : path), NULL};

	long failed = 0;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < n; i++) {
		pid_t pid = use_fork ? fork() : vfork();
		if (pid < 0) {
			fprintf(stderr, "%s: %s: %s\n", argv[0], use_fork ? "fork" : "vfork",
				strerror(errno));
			return 2;
		}
		if (pid == 0) {
			execve(path, child_argv, environ);
			_exit(127);
		}
		int status;
		while (waitpid(pid, &status, 0) < 0) {
			if (errno != EINTR) {
				fprintf(stderr, "%s: waitpid: %s\n", argv[0], strerror(errno));
				return 2;
			}
		}
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed++;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);

	double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("execs=%ld seconds=%.6f rate=%.1f pid=%d\n", n, secs, n / secs, (int)getpid());
	fflush(stdout);
	if (failed) {
		fprintf(stderr, "%s: %ld of %ld children failed (exec of %s or its exit status)\n",
			argv[0], failed, n, path);
		return 2;
	}
	return 0;
}
