"""mglru-fexit: the pages the kernel's own MGLRU finds young, caught by BPF fexit programs.

How it works (see bpf/mglru_fexit.bpf.c): fexit programs on ptep_test_and_clear_young and
pmdp_test_and_clear_young record, in a BPF hash, every page of a followed process that the
kernel finds young (Accessed bit set) and clears. MGLRU only calls them for PTEs that are
young, so a page with no entry was not accessed since the kernel last looked at it. Works on
stock kernels with MGLRU and BPF trampolines.

Active aging writes ``+ MEMCG NODE MAX_GEN SWAPPINESS 1`` to /sys/kernel/debug/lru_gen for
the target's memcg on each node (see ``pageheat.kernel.lrugen``); the rest (passive mode, the TLB
flush, the resident set, the kernel's limits) is shared with mglru-hook: see ``mglru``.
"""

from __future__ import annotations

import errno

from pageheat.kernel import cgroups, lrugen
from pageheat.kernel.libbpf import LibbpfError
from pageheat.kernel.vmlinux import BTF, kernel_functions
from pageheat.sources.base import SourceError, TargetGone
from pageheat.sources.mglru import Target, YoungPagesSource

NAME = "mglru-fexit"
# (program, kernel function, required): a required hook missing means the source cannot work.
HOOKS = (("on_pte", "ptep_test_and_clear_young", True),
         ("on_pmd", "pmdp_test_and_clear_young", True),
         ("on_pte_flush", "ptep_clear_flush_young", False))
_ENOTSUPP = 524  # the kernel's internal "not supported", leaked by BPF attach


class MglruFexitSource(YoungPagesSource):
    name = NAME
    object_name = "mglru_fexit"
    needs_lru_gen_write = True

    def programs(self) -> dict[str, bool]:
        present = kernel_functions([fn for _, fn, _ in HOOKS])
        for _, fn, required in HOOKS:
            if required and fn not in present:
                raise SourceError(f"{NAME}: kernel function {fn} is not in {BTF} (inlined or "
                                  "renamed on this kernel), so it cannot be hooked; use --source ptwalk")
        return {prog: fn in present for prog, fn, _ in HOOKS}

    def load_hint(self, e: LibbpfError) -> str:
        if e.errno in (errno.EPERM, _ENOTSUPP, errno.EOPNOTSUPP, errno.EINVAL):
            return (" (this kernel refuses fexit programs: no BPF trampolines, lockdown, or "
                    "missing CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN); use --source ptwalk")
        if e.errno in (errno.ESRCH, errno.ENOENT):
            return " (a hooked kernel function is missing: inlined or renamed); use --source ptwalk"
        return ""

    def age_memcg(self, pid: int, t: Target) -> int:
        try:
            return lrugen.age(t.memcg_id, t.nodes, self.swappiness)
        except KeyError:
            # The memcg went away (its cgroup was removed): find the process's current one.
            try:
                memcg = self._memcg(cgroups.cgroup_path(pid))
            except (FileNotFoundError, ProcessLookupError) as e:
                raise TargetGone(pid) from e
            except cgroups.CgroupError as e:
                raise SourceError(f"{NAME}: {e}") from e
            t.memcg_id, t.nodes = memcg.id, sorted(memcg.nodes)
            return lrugen.age(t.memcg_id, t.nodes, self.swappiness)
        except lrugen.LruGenError as e:
            raise SourceError(f"{NAME}: {e.strerror}") from e
