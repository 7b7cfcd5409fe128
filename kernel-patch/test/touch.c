// SPDX-License-Identifier: GPL-2.0
/*
 * touch [MB]: map MB MiB of base pages and MB MiB of THP-backed anon
 * memory and write to every page every 100 ms until killed.
 *
 * The CPU sets an accessed bit only when it fills a TLB entry, and the
 * multi-gen LRU does not flush the TLB when it clears the bit, so run this
 * on the same CPU as the process that starts the aging (taskset): the
 * context switches flush the TLB, as on a busy machine.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HPAGE (2UL << 20)

static char *map(size_t len, int advice)
{
	char *p = mmap(NULL, len + HPAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	p = (char *)(((unsigned long)p + HPAGE - 1) & ~(HPAGE - 1));
	madvise(p, len, advice);
	/* write first: a read fault would map the (huge) zero page */
	memset(p, 1, len);
	return p;
}

int main(int argc, char **argv)
{
	size_t len = (argc > 1 ? atol(argv[1]) : 32) << 20;
	char *base = map(len, MADV_NOHUGEPAGE);
	char *huge = map(len, MADV_HUGEPAGE);
	long page = sysconf(_SC_PAGESIZE);

	printf("%d\n", getpid());
	fflush(stdout);
	for (;;) {
		for (size_t off = 0; off < len; off += page) {
			base[off]++;
			huge[off]++;
		}
		usleep(100000);
	}
}
