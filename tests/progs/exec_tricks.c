// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Hostile exec callers for the exec sensor's tests: each mode execs in a
 * way that fools a sensor reading argv from the caller's memory at
 * sys_enter_execve.
 *
 *   hidden-all  FILE TARGET ARG...   every argv string in a page of a file
 *                                    mapping this process never touched
 *   hidden-tail FILE TARGET ARG...   argv[0] a normal string, the rest there
 *   hidden-fail FILE PATH ARG...     as hidden-all, exec of a missing PATH
 *                                    (ENOENT) or of a file of no known
 *                                    format (ENOEXEC)
 *   badptr      TARGET               argv[1] is a bad pointer (EFAULT)
 *   literals    N TARGET             N x fork + execve of string literals
 *   race        N TARGET             N x fork; in the child a thread rewrites
 *                                    argv (bytes and pointer) while the main
 *                                    thread execs (the "Phantom Attack")
 *
 * The environment is passed on (TARGET reads VIGIL_CMDLINE_DIR).  Exit
 * status: 0 when every exec was attempted, 1 on a set-up error.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int die(const char *what)
{
	perror(what);
	return 1;
}

/* Write ARGs to FILE as NUL-terminated strings, map it, point argv there. */
static int exec_from_untouched_page(const char *file, const char *path,
				    char **args, int nargs, int keep_argv0)
{
	char **argv = calloc(nargs + 1, sizeof(char *));
	size_t size = 0, off = 0;
	char *map;
	int fd, i;

	if (!argv)
		return die("calloc");
	fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return die("open");
	for (i = 0; i < nargs; i++) {
		size_t len = strlen(args[i]) + 1;

		if (write(fd, args[i], len) != (ssize_t)len)
			return die("write");
		size += len;
	}
	/* MAP_PRIVATE, no read, no MAP_POPULATE: no page table entry yet */
	map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (map == MAP_FAILED)
		return die("mmap");
	close(fd);
	for (i = 0; i < nargs; i++) {
		argv[i] = map + off;	/* pointer arithmetic only: nothing read */
		off += strlen(args[i]) + 1;
	}
	if (keep_argv0)
		argv[0] = args[0];	/* a normal, resident string */
	execve(path, argv, environ);
	/* hidden-fail: the exec is meant to fail, with either of these */
	return errno == ENOENT || errno == ENOEXEC ? 0 : die("execve");
}

static int badptr(const char *target)
{
	char *argv[] = { (char *)target, (char *)1, NULL };

	execve(target, argv, environ);
	return errno == EFAULT ? 0 : die("execve");
}

static int wait_all(void)
{
	int status, rc = 0;

	while (wait(&status) > 0)
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			rc = 1;
	return rc;
}

static int literals(int n, const char *target)
{
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();

		if (pid < 0)
			return die("fork");
		if (pid == 0) {
			/* the child never touched its copy of .rodata */
			char *argv[] = { (char *)target, "literal_one", "", "literal three", NULL };

			execve(target, argv, environ);
			_exit(127);
		}
		if (i % 16 == 15 && wait_all())
			return 1;
	}
	return wait_all();
}

static char benign[] = "benign_arg_";
static char evil[] = "EVIL_ARG___";
static char flip[] = "benign_arg_";
static char *race_argv[4];
static unsigned long rewrites;	/* the child execs once the rewriter runs */

static void *rewriter(void *unused)
{
	(void)unused;
	for (unsigned long i = 0;; i++) {
		/* bytes of one string, and which string argv[2] points at */
		memcpy(flip, (i & 1) ? evil : benign, sizeof(flip));
		__atomic_store_n(&race_argv[2], (i & 2) ? flip : benign, __ATOMIC_RELAXED);
		__atomic_store_n(&rewrites, i + 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static int race(int n, const char *target)
{
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();

		if (pid < 0)
			return die("fork");
		if (pid == 0) {
			pthread_t t;

			static char race_word[] = "race";
			size_t touched = 0;

			race_argv[0] = (char *)target;
			race_argv[1] = race_word;
			race_argv[2] = flip;
			race_argv[3] = NULL;
			/* every string resident: only the race can fool a sensor here */
			for (int k = 0; k < 3; k++)
				touched += strlen(race_argv[k]) + strlen(benign) + strlen(evil);
			if (!touched)
				_exit(125);
			if (pthread_create(&t, NULL, rewriter, NULL))
				_exit(126);
			/* the rewriter is running, and stops at a varying point */
			while (__atomic_load_n(&rewrites, __ATOMIC_RELAXED) < 1000u + (i % 7) * 100)
				sched_yield();	/* one CPU free, or an emulated one: let it run */
			execve(target, race_argv, environ);
			_exit(127);
		}
		if (wait_all())
			return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 5 && !strcmp(argv[1], "hidden-all"))
		return exec_from_untouched_page(argv[2], argv[3], argv + 3, argc - 3, 0);
	if (argc >= 5 && !strcmp(argv[1], "hidden-tail"))
		return exec_from_untouched_page(argv[2], argv[3], argv + 3, argc - 3, 1);
	if (argc >= 5 && !strcmp(argv[1], "hidden-fail"))
		return exec_from_untouched_page(argv[2], argv[3], argv + 3, argc - 3, 0);
	if (argc == 3 && !strcmp(argv[1], "badptr"))
		return badptr(argv[2]);
	if (argc == 4 && !strcmp(argv[1], "literals"))
		return literals(atoi(argv[2]), argv[3]);
	if (argc == 4 && !strcmp(argv[1], "race"))
		return race(atoi(argv[2]), argv[3]);
	fprintf(stderr, "usage: exec_tricks MODE ... (see the source)\n");
	return 2;
}
