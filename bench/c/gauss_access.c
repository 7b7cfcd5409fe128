/* Gaussian random-access microbenchmark for bench/overhead.py.
 *
 * Maps SIZE bytes of anonymous memory with 4 KiB pages (MADV_NOHUGEPAGE), writes every page,
 * prints "ready <pid> <pages>", waits for a line on stdin, then for SECONDS reads one 8-byte
 * word per access at a Gaussian random page (mean: the middle page, stddev: pages / 6, like
 * memtier's G pattern; Irwin-Hall sum of four 16-bit uniforms from xorshift64*), and prints
 * "accesses <n> seconds <s> cpu <s>". Single-threaded and CPU-bound (plus TLB and cache misses).
 *
 *   gcc -O2 -o gauss_access gauss_access.c && ./gauss_access 4294967296 20
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s SIZE SECONDS\n", argv[0]); return 2; }
    size_t size = strtoull(argv[1], NULL, 0);
    double seconds = atof(argv[2]);
    size_t pages = size / 4096;
    uint64_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(mem, size, MADV_NOHUGEPAGE);
    for (size_t p = 0; p < pages; p++) mem[p * 512] = p;
    printf("ready %d %zu\n", getpid(), pages);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;
    uint64_t x = 88172645463325252ull, sum = 0, n = 0;
    const double mid = pages / 2.0, scale = (pages / 6.0) / 37837.23;  /* sd of the sum: 65536*sqrt(4/12) */
    double t0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID), t = t0;
    while (t - t0 < seconds) {
        for (int i = 0; i < 65536; i++) {
            x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
            uint64_t r = x * 2685821657736338717ull;
            int64_t s = (int64_t)((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48)) - 131070;
            double pg = mid + s * scale;
            size_t p = pg < 0 ? 0 : (pg >= pages ? pages - 1 : (size_t)pg);
            sum += mem[p * 512 + ((r >> 7) & 511)];
        }
        n += 65536;
        t = now(CLOCK_MONOTONIC);
    }
    printf("accesses %llu seconds %.4f cpu %.4f sum %llu\n", (unsigned long long)n, t - t0,
           now(CLOCK_PROCESS_CPUTIME_ID) - c0, (unsigned long long)sum);
    return 0;
}
