// SPDX-License-Identifier: GPL-2.0
/*
 * harvest [-p PID] [-n ROUNDS] [-c CGROUP_ID] [-e]: attach harvest.bpf.c,
 * age ROUNDS times through bpf_lru_gen_run_aging() (or, with -e, wait for
 * aging started elsewhere, e.g. by debugfs) and print what was harvested.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "harvest.h"
#include "harvest.skel.h"

static int age(struct harvest_bpf *skel, __u64 cgroup_id)
{
	struct aging_args args = {
		.cgroup_id = cgroup_id, .nid = 0, .can_swap = 1, .force_scan = 1,
	};
	LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &args,
		    .ctx_size_in = sizeof(args));
	int err;

	err = bpf_prog_test_run_opts(bpf_program__fd(skel->progs.run_aging), &opts);
	return err ?: args.ret;	/* libbpf returns -errno */
}

int main(int argc, char **argv)
{
	struct harvest_counts *c, prev = {};
	__u64 cgroup_id = 1;	/* the root of cgroup v2 */
	int rounds = 3, external = 0, pid = 0, opt, i, ret = 0;
	struct harvest_bpf *skel;

	while ((opt = getopt(argc, argv, "p:n:c:e")) != -1) {
		switch (opt) {
		case 'p': pid = atoi(optarg); break;
		case 'n': rounds = atoi(optarg); break;
		case 'c': cgroup_id = strtoull(optarg, NULL, 0); break;
		case 'e': external = 1; break;
		default: return 2;
		}
	}

	skel = harvest_bpf__open();
	if (!skel)
		return 1;
	skel->rodata->target_tgid = pid;
	/* Filtering by mm_struct needs fmod_ret; without a target, skip it. */
	if (!pid)
		bpf_program__set_autoload(skel->progs.skip_mm, false);
	if (external)
		bpf_program__set_autoload(skel->progs.run_aging, false);
	if (harvest_bpf__load(skel) || harvest_bpf__attach(skel)) {
		fprintf(stderr, "harvest: load/attach failed\n");
		return 1;
	}
	c = &skel->bss->counts;

	for (i = 1; i <= rounds; i++) {
		sleep(1);
		if (!external)
			ret = age(skel, cgroup_id);
		printf("round %d: aging=%d seq=%llu pte=%llu pte_raw=%llu pmd=%llu "
		       "look_around=%llu pages=%llu other=%llu walked=%llu skipped=%llu\n",
		       i, ret, c->last_seq, c->pte - prev.pte,
		       c->pte_raw - prev.pte_raw, c->pmd - prev.pmd,
		       c->look_around - prev.look_around, c->pages - prev.pages,
		       c->other - prev.other, c->walked - prev.walked,
		       c->skipped - prev.skipped);
		prev = *c;
		if (ret)
			break;
	}
	harvest_bpf__destroy(skel);
	return ret ? 1 : 0;
}
