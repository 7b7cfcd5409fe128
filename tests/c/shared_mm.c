/* Two processes, one address space: clone(CLONE_VM) without CLONE_THREAD (as vfork children
 * until they exec, and some runtimes). Each reads its own HOT pages of one mapping every
 * 10 ms: the child pages [0, HOT), the parent pages [HOT, 2 HOT). Used by
 * tests/test_two_agers.py: aging one of the two pids ages the other's memory too.
 *
 * usage: shared_mm PAGES HOT
 * Prints "ready PARENT CHILD\n" once every page was written, then reads until killed; the
 * child dies with the parent (PR_SET_PDEATHSIG). */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define PAGE 4096
static volatile char *region;
static volatile long sink;
static long hot;

static int reader(void *arg)
{
	long first = (long)arg;

	for (;;) {
		for (long i = first; i < first + hot; i++)
			sink += region[i * PAGE];
		usleep(10000);
	}
	return 0;
}

static int child_main(void *arg)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	return reader(arg);
}

int main(int argc, char **argv)
{
	long pages;
	char *stack;
	int child;

	if (argc != 3)
		return 2;
	pages = atol(argv[1]);
	hot = atol(argv[2]);
	if (hot < 1 || pages < 2 * hot)
		return 2;
	region = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED)
		return 1;
	madvise((void *)region, pages * PAGE, MADV_NOHUGEPAGE);
	for (long i = 0; i < pages; i++)
		region[i * PAGE] = 1;
	stack = malloc(1 << 20);
	child = clone(child_main, stack + (1 << 20), CLONE_VM | SIGCHLD, (void *)0);
	if (child < 0)
		return 1;
	printf("ready %d %d\n", getpid(), child);
	fflush(stdout);
	return reader((void *)hot);
}
