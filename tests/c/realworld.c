// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * Memory layouts that real programs have and that pageheat must count right (issue 11).
 * Built by tests/test_realworld_pages.py with gcc. Prints "ready 0xADDR" once the layout is
 * in place, then keeps its hot pages hot until killed.
 *
 *   zero N HOT WRITTEN   N anonymous pages read once (the kernel maps its shared zero page),
 *                        the first WRITTEN of them written (own pages), the first HOT read
 *                        again and again
 *   hugezero MIB         MIB of THP-eligible (MADV_HUGEPAGE) memory, only read: the huge
 *                        zero page where THP is enabled
 *   sparse GIB           a GIB GiB MAP_NORESERVE reservation, one page written per GiB
 *   hugetlb N HOT        N 2 MiB MAP_HUGETLB pages written, the first HOT read again and again
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL
#define HUGE (2UL << 20)

static volatile uint64_t sink;

static void ready(void *addr)
{
	printf("ready %p\n", addr);
	fflush(stdout);
}

static void *map(size_t len, int extra)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

/* Read the first word of each of n pages, forever, from base with stride step. */
static void spin(char *base, size_t n, size_t step)
{
	for (;;) {
		for (size_t i = 0; i < n; i++)
			sink += *(volatile uint64_t *)(base + i * step);
		usleep(1000);
	}
}

static int zero(size_t n, size_t hot, size_t written)
{
	char *p = map(n * PAGE, 0);

	madvise(p, n * PAGE, MADV_NOHUGEPAGE);	/* 4 KiB zero-page PTEs, whatever THP says */
	for (size_t i = 0; i < n; i++)
		sink += *(volatile uint64_t *)(p + i * PAGE);
	for (size_t i = 0; i < written; i++)
		p[i * PAGE] = 1;
	ready(p);
	spin(p, hot, PAGE);
	return 0;
}

static int hugezero(size_t mib)
{
	size_t len = mib << 20;
	char *raw = map(len + HUGE, 0);
	char *p = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));

	if (madvise(p, len, MADV_HUGEPAGE)) {
		perror("madvise");
		return 1;
	}
	for (size_t i = 0; i < len; i += PAGE)
		sink += *(volatile uint64_t *)(p + i);
	ready(p);
	spin(p, len / HUGE, HUGE);
	return 0;
}

static int sparse(size_t gib)
{
	char *p = mmap(NULL, gib << 30, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	madvise(p, gib << 30, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < gib; i++)
		p[i << 30] = 1;
	ready(p);
	for (;;)
		pause();
}

static int hugetlb(size_t n, size_t hot)
{
	char *p = map(n * HUGE, MAP_HUGETLB);

	for (size_t i = 0; i < n; i++)
		memset(p + i * HUGE, 1, HUGE);
	ready(p);
	spin(p, hot, HUGE);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 5 && !strcmp(argv[1], "zero"))
		return zero(strtoul(argv[2], 0, 0), strtoul(argv[3], 0, 0), strtoul(argv[4], 0, 0));
	if (argc >= 3 && !strcmp(argv[1], "hugezero"))
		return hugezero(strtoul(argv[2], 0, 0));
	if (argc >= 3 && !strcmp(argv[1], "sparse"))
		return sparse(strtoul(argv[2], 0, 0));
	if (argc >= 4 && !strcmp(argv[1], "hugetlb"))
		return hugetlb(strtoul(argv[2], 0, 0), strtoul(argv[3], 0, 0));
	fprintf(stderr, "usage: %s zero N HOT WRITTEN | hugezero MIB | sparse GIB | hugetlb N HOT\n", argv[0]);
	return 2;
}
