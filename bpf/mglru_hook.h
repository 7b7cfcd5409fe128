/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * The context of mglru_hook.bpf.c's run_aging, filled by exporter/sources/mglru_hook.py
 * (a ctypes structure there, checked field by field against the object's BTF at load).
 */
#ifndef PAGEHEAT_MGLRU_HOOK_H
#define PAGEHEAT_MGLRU_HOOK_H

struct aging_args {
	__u64 cgroup_id;	/* cgroup v2 id: inode number of its directory; the root is 1 */
	__s32 nid;
	__s32 can_swap;
	__s32 filter;		/* walk only the followed processes' mms (skip_mm), this aging */
	__s32 ret;		/* out: bpf_lru_gen_run_aging()'s return, 0 or -errno */
};

#endif
