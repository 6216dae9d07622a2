/*
 * summary_vs_stream workload: capability checks as fast as one CPU can make
 * them, for a fixed time.
 *
 *   summary_vs_stream_load [--seconds S] [--cpu N] [--op setuid|setgid|both]
 *
 * Each op is one syscall that makes exactly one capability check: as root,
 * setuid(0) asks cap_capable(CAP_SETUID) (ns_capable_setid() in
 * __sys_setuid) and changes nothing; setgid(0) asks CAP_SETGID.  --op both
 * alternates them, so a per-capability count has two keys.  The call is
 * made with syscall(2), not glibc's setuid(), which would broadcast the
 * change to every thread (one thread here, but the raw call is the one op
 * the benchmark means).
 *
 * Sequence (driven by bench/summary_vs_stream, which starts a tracer
 * between steps 1 and 2):
 *   1. pins itself to CPU N (-1: not pinned), prints "ready pid=P" and
 *      reads one line from stdin ("go");
 *   2. for S seconds, calls the op in a loop, counting calls and failures
 *      (the clock is read every 256 calls: its cost stays out of the loop);
 *   3. prints one line:
 *        ops=N setuid=U setgid=G seconds=S rate=R pid=P cpu=C errors=E
 *      (cpu: its user+sys CPU seconds during the window).
 *
 * Needs root (a non-root setuid(0) is denied: still a check, but EPERM).
 * Exit 0 on success, 1 on a usage error, 2 on a system error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "summary_vs_stream_load: %s: %s\n", what, strerror(errno));
	exit(2);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

static void usage(void)
{
	fprintf(stderr, "usage: summary_vs_stream_load [--seconds S] [--cpu N] "
			"[--op setuid|setgid|both]\n");
	exit(1);
}

int main(int argc, char **argv)
{
	double seconds = 3;
	int pin_cpu = -1;
	int op_uid = 1, op_gid = 0;

	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		const char *opt = argv[i], *val = argv[++i];
		char *end;
		if (!strcmp(opt, "--seconds")) {
			seconds = strtod(val, &end);
			if (*end || !(seconds > 0 && seconds <= 3600))
				usage();
		} else if (!strcmp(opt, "--cpu")) {
			long v = strtol(val, &end, 10);
			if (*val == '\0' || *end || v < -1 || v >= CPU_SETSIZE)
				usage();
			pin_cpu = (int)v;
		} else if (!strcmp(opt, "--op")) {
			op_uid = !strcmp(val, "setuid") || !strcmp(val, "both");
			op_gid = !strcmp(val, "setgid") || !strcmp(val, "both");
			if (!op_uid && !op_gid)
				usage();
		} else {
			usage();
		}
	}
	if (pin_cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(pin_cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) < 0)
			die("sched_setaffinity");
	}

	printf("ready pid=%d\n", getpid());
	fflush(stdout);
	char line[64];
	if (!fgets(line, sizeof(line), stdin))
		return 2; /* the driver went away */

	long n_uid = 0, n_gid = 0, errors = 0;
	double cpu0 = cpu_seconds(), t0 = now(), t1 = t0, stop = t0 + seconds;
	for (;;) {
		for (int k = 0; k < 256; k++) {
			/* alternate when both: even calls setuid, odd setgid */
			if (op_uid && (!op_gid || !(k & 1))) {
				errors += syscall(SYS_setuid, 0) != 0;
				n_uid++;
			} else {
				errors += syscall(SYS_setgid, 0) != 0;
				n_gid++;
			}
		}
		t1 = now();
		if (t1 >= stop)
			break;
	}
	double cpu = cpu_seconds() - cpu0, secs = t1 - t0;
	long ops = n_uid + n_gid;
	printf("ops=%ld setuid=%ld setgid=%ld seconds=%.6f rate=%.1f pid=%d cpu=%.3f errors=%ld\n",
	       ops, n_uid, n_gid, secs, ops / secs, getpid(), cpu, errors);
	return 0;
}
