/*
 * accept_overhead workload: a loopback TCP server that accepts as fast as it
 * can for a fixed time, and the client processes that keep it busy.
 *
 *   accept_overhead_load [--seconds S] [--clients C] [--inflight K]
 *                        [--server-cpu N] [--client-cpu N]
 *
 * Sequence (driven by bench/accept_overhead, which starts a monitor between
 * steps 2 and 3):
 *   1. the server (this process) listens on 127.0.0.1:<ephemeral port> and
 *      forks C client processes, which wait;
 *   2. it prints "ready pid=P port=N" and reads one line from stdin ("go");
 *   3. it releases the clients, starts its clock and, for S seconds, runs
 *      accept4() + close() in a loop, counting the accepts;
 *   4. it stops the clients, reaps them, and prints one line:
 *        accepts=N seconds=S rate=R pid=P accept_errors=E server_cpu=U
 *        completed=X connect_errors=Y client_cpu=Z
 *      (server_cpu: the server's user+sys CPU seconds during the window;
 *      completed: connections the clients saw closed by the server).
 *
 * Each client keeps K non-blocking connections in flight: connect(), wait
 * (epoll) until the server has closed it, close(), connect again.  So the
 * accept queue never holds more than C*K connections, and the clients go
 * as fast as the server lets them.
 *
 * TIME_WAIT: the server closes first, abortively: SO_LINGER {1, 0} is set on
 * the listening socket and inherited by every accepted socket, so close()
 * sends a RST and frees the connection at once on both sides.  Neither side
 * keeps a TIME_WAIT socket, so ephemeral ports are reused immediately and a
 * run of any length cannot exhaust them (no sysctl is changed).
 *
 * Everything is on 127.0.0.1.  Exit 0 on success, 1 on a usage error,
 * 2 on a system error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 64
#define MAX_INFLIGHT 4096

static void die(const char *what)
{
	fprintf(stderr, "accept_overhead_load: %s: %s\n", what, strerror(errno));
	exit(2);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(int who)
{
	struct rusage ru;
	getrusage(who, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

static void pin(int cpu)
{
	if (cpu < 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) < 0)
		die("sched_setaffinity");
}

struct client_stats {
	long completed;		/* connections the server accepted and closed */
	long connect_errors;	/* socket()/connect() failures (e.g. no free port) */
};

/* Opens one non-blocking connection to the server and registers it. */
static int open_conn(int ep, const struct sockaddr_in *addr, struct client_stats *st)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		st->connect_errors++;
		return -1;
	}
	if (connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) < 0 &&
	    errno != EINPROGRESS) {
		st->connect_errors++;
		close(fd);
		return -1;
	}
	/* Readable (EOF or RST) once the server has accepted and closed it. */
	struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl");
	return fd;
}

/* A client process: K connections in flight until `stop_fd` is readable. */
static void client(int go_fd, int stop_fd, int out_fd, int inflight,
		   const struct sockaddr_in *addr)
{
	char c;
	/* The server closes its end of the go pipe to start every client at once. */
	while (read(go_fd, &c, 1) < 0 && errno == EINTR)
		;
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	struct epoll_event sev = {.events = EPOLLIN, .data.fd = stop_fd};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, stop_fd, &sev) < 0)
		die("epoll_ctl");

	struct client_stats st = {0};
	int open = 0;
	for (int i = 0; i < inflight; i++)
		open += open_conn(ep, addr, &st) >= 0;

	struct epoll_event evs[256];
	for (;;) {
		int n = epoll_wait(ep, evs, 256, open < inflight ? 10 : 1000);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == stop_fd)
				goto done;
			close(fd); /* also removes it from the epoll set */
			open--;
			st.completed++;
		}
		/* Refill; after a failed connect (no port, ...) retry on the next turn. */
		while (open < inflight) {
			if (open_conn(ep, addr, &st) < 0)
				break;
			open++;
		}
	}
done:
	if (write(out_fd, &st, sizeof(st)) != sizeof(st))
		die("write (client stats)");
	_exit(0);
}

static long arg_long(const char *opt, const char *val, long lo, long hi)
{
	char *end;
	long v = strtol(val, &end, 10);
	if (*val == '\0' || *end || v < lo || v > hi) {
		fprintf(stderr, "accept_overhead_load: %s must be an integer in [%ld, %ld]\n",
			opt, lo, hi);
		exit(1);
	}
	return v;
}

int main(int argc, char **argv)
{
	double seconds = 5;
	int clients = 1, inflight = 64, server_cpu = -1, client_cpu = -1;
	for (int i = 1; i < argc; i++) {
		const char *opt = argv[i];
		if (i + 1 >= argc) {
			fprintf(stderr, "accept_overhead_load: %s needs a value\n", opt);
			return 1;
		}
		const char *val = argv[++i];
		if (!strcmp(opt, "--seconds")) {
			char *end;
			seconds = strtod(val, &end);
			if (*end || !(seconds > 0 && seconds <= 3600)) {
				fprintf(stderr, "accept_overhead_load: --seconds in (0, 3600]\n");
				return 1;
			}
		} else if (!strcmp(opt, "--clients")) {
			clients = arg_long(opt, val, 1, MAX_CLIENTS);
		} else if (!strcmp(opt, "--inflight")) {
			inflight = arg_long(opt, val, 1, MAX_INFLIGHT);
		} else if (!strcmp(opt, "--server-cpu")) {
			server_cpu = arg_long(opt, val, -1, CPU_SETSIZE - 1);
		} else if (!strcmp(opt, "--client-cpu")) {
			client_cpu = arg_long(opt, val, -1, CPU_SETSIZE - 1);
		} else {
			fprintf(stderr,
				"usage: %s [--seconds S] [--clients C] [--inflight K] "
				"[--server-cpu N] [--client-cpu N]\n",
				argv[0]);
			return 1;
		}
	}
	signal(SIGPIPE, SIG_IGN);

	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		die("socket");
	int one = 1;
	if (setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		die("setsockopt SO_REUSEADDR");
	/* Inherited by accepted sockets: close() resets, no TIME_WAIT (see top). */
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	if (setsockopt(lfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) < 0)
		die("setsockopt SO_LINGER");
	/* accept() gives up after 200 ms with EAGAIN: the loop never hangs. */
	struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
	if (setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
		die("setsockopt SO_RCVTIMEO");
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		die("bind 127.0.0.1:0");
	if (listen(lfd, 4096) < 0)
		die("listen");
	socklen_t alen = sizeof(addr);
	if (getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0)
		die("getsockname");

	int go[2], stop[2], out[2];
	if (pipe2(go, O_CLOEXEC) < 0 || pipe2(stop, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0)
		die("pipe2");
	pid_t kids[MAX_CLIENTS];
	for (int i = 0; i < clients; i++) {
		kids[i] = fork();
		if (kids[i] < 0)
			die("fork");
		if (kids[i] == 0) {
			close(lfd);
			close(go[1]);
			close(stop[1]);
			close(out[0]);
			pin(client_cpu);
			client(go[0], stop[0], out[1], inflight, &addr);
		}
	}
	close(go[0]);
	close(stop[0]);
	close(out[1]);
	pin(server_cpu);

	printf("ready pid=%d port=%d\n", (int)getpid(), ntohs(addr.sin_port));
	fflush(stdout);
	char line[64];
	if (!fgets(line, sizeof(line), stdin)) {
		fprintf(stderr, "accept_overhead_load: no \"go\" on stdin: not run\n");
		close(stop[1]);
		for (int i = 0; i < clients; i++)
			waitpid(kids[i], NULL, 0);
		return 2;
	}

	long accepts = 0, errors = 0;
	double cpu0 = cpu_seconds(RUSAGE_SELF);
	double t0 = now(), t1 = t0, end = t0 + seconds;
	close(go[1]); /* go, clients */
	while (t1 < end) {
		/* The peer's address too, as servers ask for it (and audit logs it). */
		struct sockaddr_in peer;
		socklen_t plen = sizeof(peer);
		int fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
		if (fd >= 0) {
			accepts++;
			close(fd);
		} else if (errno != EINTR) {
			errors++; /* EAGAIN (200 ms without a connection), ECONNABORTED, ... */
		}
		t1 = now();
	}
	double server_cpu_s = cpu_seconds(RUSAGE_SELF) - cpu0;
	close(stop[1]); /* stop, clients */

	struct client_stats total = {0}, st;
	for (int i = 0; i < clients; i++) {
		ssize_t n;
		while ((n = read(out[0], &st, sizeof(st))) < 0 && errno == EINTR)
			;
		if (n != sizeof(st)) {
			fprintf(stderr, "accept_overhead_load: a client reported nothing\n");
			return 2;
		}
		total.completed += st.completed;
		total.connect_errors += st.connect_errors;
	}
	for (int i = 0; i < clients; i++)
		waitpid(kids[i], NULL, 0);
	double secs = t1 - t0;
	printf("accepts=%ld seconds=%.6f rate=%.1f pid=%d accept_errors=%ld server_cpu=%.3f "
	       "completed=%ld connect_errors=%ld client_cpu=%.3f\n",
	       accepts, secs, accepts / secs, (int)getpid(), errors, server_cpu_s,
	       total.completed, total.connect_errors, cpu_seconds(RUSAGE_CHILDREN));
	fflush(stdout);
	close(lfd);
	return 0;
}
