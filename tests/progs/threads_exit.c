/* Forks N processes (argv[1], default 500) whose 9 threads all call
 * SYS_exit at once: exactly one exit event per process must result. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
static pthread_barrier_t b;
static void *t(void *a) { pthread_barrier_wait(&b); syscall(SYS_exit, 0); return 0; }
int main(int argc, char **argv) {
	int n = argc > 1 ? atoi(argv[1]) : 500;
	for (int i = 0; i < n; i++) {
		pid_t p = fork();
		if (!p) {
			pthread_t th[8]; pthread_barrier_init(&b, 0, 9);
			for (int k = 0; k < 8; k++) pthread_create(&th[k], 0, t, 0);
			pthread_barrier_wait(&b); syscall(SYS_exit, 0);
		}
		waitpid(p, 0, 0);
	}
	return 0;
}
