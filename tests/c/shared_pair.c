// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * A parent and a child that share memory, for tests/test_young_shared.py:
 *
 *   shared_pair MIB
 *
 * MIB MiB of shared anonymous memory, written once by the parent, then read again and again
 * by the child only; and MIB MiB of the parent's own memory (mapped after the fork, so never
 * shared), which the parent reads once every 100 ms. Prints "CHILD SHARED OWN" (pid, two
 * addresses in hex) when both are in place. A C program, so that besides these the two share
 * only a few libc pages.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define PAGE 4096UL

static volatile uint64_t sink;

static char *map(size_t len, int flags)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	madvise(p, len, MADV_NOHUGEPAGE);	/* 4 KiB pages: PG_young per page */
	for (size_t off = 0; off < len; off += PAGE)
		p[off] = 1;
	return p;
}

static void read_all(const char *p, size_t len)
{
	for (size_t off = 0; off < len; off += PAGE)
		sink += *(volatile const char *)(p + off);
}

int main(int argc, char **argv)
{
	size_t len = (argc > 1 ? strtoul(argv[1], NULL, 10) : 64) << 20;
	char *shared = map(len, MAP_SHARED), *own;
	pid_t parent = getpid(), child = fork();

	if (child < 0) {
		perror("fork");
		return 1;
	}
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);	/* never outlive the parent */
		if (getppid() != parent)
			return 0;
		for (;;)
			read_all(shared, len);
	}
	own = map(len, MAP_PRIVATE);
	printf("%d %p %p\n", child, (void *)shared, (void *)own);
	fflush(stdout);
	for (;;) {
		read_all(own, len);
		usleep(100000);
	}
}
