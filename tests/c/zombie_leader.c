/* A process whose main thread calls pthread_exit while a worker keeps running: the thread-group
 * leader becomes a zombie, /proc/PID/maps reads empty, /proc/PID/clear_refs ages nothing and
 * /proc/PID/statm reads 0 (issue 11, kind 3). Used by tests/test_realworld_proc.py.
 *
 * usage: zombie_leader PAGES HOT [late]
 * The worker maps PAGES anonymous pages, writes each once, prints
 * "ready ADDR PAGES HOT TID\n" (ADDR in hex, TID the worker's thread id) on stdout, then reads
 * the first HOT pages over and over until stdin reaches EOF, and exits the whole process.
 * The main thread calls pthread_exit at once, or with "late" only when it gets SIGUSR1. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static long pages, hot;
static volatile int done;
static int late;

static void *watch_stdin(void *arg)
{
	char c;
	(void)arg;
	while (read(0, &c, 1) > 0)
		;
	done = 1;
	return NULL;
}

static void *worker(void *arg)
{
	long psz = sysconf(_SC_PAGESIZE);
	volatile char *p;
	pthread_t w;
	unsigned long sum = 0;

	(void)arg;
	p = mmap(NULL, pages * psz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	madvise((void *)p, pages * psz, MADV_NOHUGEPAGE); /* one Accessed bit per 4 KiB page */
	for (long i = 0; i < pages; i++)
		p[i * psz] = 1;
	pthread_create(&w, NULL, watch_stdin, NULL);
	if (!late)
		usleep(200000); /* let main reach pthread_exit first */
	printf("ready %lx %ld %ld %d\n", (unsigned long)p, pages, hot, gettid());
	fflush(stdout);
	while (!done)
		for (long i = 0; i < hot; i++)
			sum += p[i * psz];
	exit(sum == 42);
}

int main(int argc, char **argv)
{
	pthread_t t;
	sigset_t usr1;
	int sig;

	if (argc < 3)
		return 2;
	pages = atol(argv[1]);
	hot = atol(argv[2]);
	late = argc > 3 && !strcmp(argv[3], "late");
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL); /* inherited: only sigwait below takes it */
	pthread_create(&t, NULL, worker, NULL);
	if (late)
		sigwait(&usr1, &sig);
	pthread_exit(NULL); /* the leader becomes a zombie; the process lives on */
}
