"""mglru-hook: young pages from the tracepoints of pageheat's kernel series (kernel-patch/).

How it works (see bpf/mglru_hook.bpf.c): tp_btf programs on mglru_pte_young_tp,
mglru_pmd_young_tp and mglru_look_around_young_tp record, in the same BPF hash as
mglru-fexit, every page of a followed process that MGLRU found young. Active aging runs a
BPF_PROG_TYPE_SYSCALL program that calls the series' ``bpf_lru_gen_run_aging()`` kfunc (no
debugfs) for the target's cgroup on each node, with an fmod_ret program on
``bpf_lru_gen_skip_mm()`` that makes that walk visit only the followed processes' mms: the
cost of an aging follows the targets, not everything charged to their memcg. The kernel's
own agings are never filtered. Everything else (passive mode, the TLB flush, the resident
set) is shared with mglru-fexit: see ``mglru``.

Needs a kernel with the series and CONFIG_LRU_GEN_BPF_HARVEST; stock kernels get one line
naming the fallback. The aging takes a cgroup v2 id, so active mode needs the target's
cgroup to be on a mounted cgroup v2 hierarchy (the root cgroup always works).
"""

from __future__ import annotations

import ctypes as C
import errno
import logging
import os
from pathlib import Path

from pageheat.kernel import cgroups
from pageheat.kernel.libbpf import LibbpfError
from pageheat.kernel.vmlinux import BTF, kernel_functions
from pageheat.sources.base import SourceError, TargetGone
from pageheat.sources.mglru import BTF_TYPES as YOUNG_BTF_TYPES
from pageheat.sources.mglru import Target, YoungPagesSource

NAME = "mglru-hook"
TRACEPOINTS = ("mglru_pte_young_tp", "mglru_pmd_young_tp", "mglru_look_around_young_tp")
PROGRAMS = {"pte_young": "mglru_pte_young_tp", "pmd_young": "mglru_pmd_young_tp",
            "look_around_young": "mglru_look_around_young_tp"}
KFUNC, FILTER_HOOK = "bpf_lru_gen_run_aging", "bpf_lru_gen_skip_mm"

log = logging.getLogger(__name__)


class _AgingArgs(C.Structure):
    """struct aging_args in bpf/mglru_hook.h (checked against the object's BTF at load)."""

    _fields_ = [("cgroup_id", C.c_uint64), ("nid", C.c_int32), ("can_swap", C.c_int32),
                ("filter", C.c_int32), ("ret", C.c_int32)]


# C name -> Python description, for Btf.check (tests/test_unit_btf.py checks them too).
BTF_TYPES = ({**YOUNG_BTF_TYPES[0], "aging_args": _AgingArgs}, YOUNG_BTF_TYPES[1])


def kernel_support(btf: Path = BTF) -> str | None:
    """None when this kernel has the series' tracepoints, aging kfunc and walk filter hook;
    otherwise why not, in a few words."""
    want = [f"btf_trace_{tp}" for tp in TRACEPOINTS] + [KFUNC, FILTER_HOOK]
    present = kernel_functions(want, btf)
    if not any(w.startswith("btf_trace_") and w in present for w in want):
        return "this kernel lacks the mglru_*_young_tp tracepoints (kernel-patch/ series)"
    missing = [w for w in want if w not in present]
    if missing:
        return (f"this kernel lacks {', '.join(missing)} (series without "
                "CONFIG_LRU_GEN_BPF_HARVEST?)")
    return None


class MglruHookSource(YoungPagesSource):
    name = NAME
    object_name = "mglru_hook"
    attach_skip = ("run_aging",)  # run through BPF_PROG_TEST_RUN, not attached
    btf_types = BTF_TYPES

    def __init__(self, *args: object, walk_filter: bool = True, **kwargs: object) -> None:
        self.walk_filter = walk_filter
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def programs(self) -> dict[str, bool]:
        why = kernel_support()
        if why:
            raise SourceError(f"{NAME}: {why}; use --source mglru-fexit or ptwalk")
        active = self.aging == "active"
        return {**dict.fromkeys(PROGRAMS, True), "run_aging": active,
                "skip_mm": active and self.walk_filter}

    def load_hint(self, e: LibbpfError) -> str:
        if e.errno in (errno.EPERM, errno.EACCES):
            return " (needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)"
        return " (a kernel built from a different kernel-patch/ series?)"

    def age_memcg(self, pid: int, t: Target) -> int:
        """One bpf_lru_gen_run_aging() per node: force_scan, and the walk filter if on."""
        if not t.cgroup_id:
            t.cgroup_id = self._cgroup_id(pid, t)
        requests = 0
        for nid in t.nodes:
            ret = self._run_aging(t.cgroup_id, nid)
            if ret == -errno.ENOENT:
                # The cgroup was removed (the process moved): look up its current one.
                t.cgroup_id = 0
                t.cgroup_id = self._cgroup_id(pid, t)
                ret = self._run_aging(t.cgroup_id, nid)
            if ret == -errno.EINVAL:
                continue  # a node without memory: nothing to age there
            if ret:
                raise SourceError(f"{NAME}: {KFUNC}(cgroup {t.cgroup}, node {nid}) failed: "
                                  f"{os.strerror(-ret)}")
            requests += 1
        return requests

    def _run_aging(self, cgroup_id: int, nid: int) -> int:
        # The filter is a per-aging argument, not a load-time constant: it may change between
        # agings (the lab's A/B of filtered and unfiltered aging turns it on and off).
        args = _AgingArgs(cgroup_id=cgroup_id, nid=nid, can_swap=1, filter=int(self.walk_filter))
        try:
            self._obj.test_run("run_aging", args)  # type: ignore[union-attr]
        except LibbpfError as e:
            raise SourceError(f"{NAME}: running the aging program: {e.strerror}") from e
        return int(args.ret)

    def _cgroup_id(self, pid: int, t: Target) -> int:
        try:
            t.cgroup = cgroups.cgroup_path(pid)
            return cgroups.cgroup_id(t.cgroup)
        except (FileNotFoundError, ProcessLookupError) as e:
            if not os.path.exists(f"/proc/{pid}"):
                raise TargetGone(pid) from e
            raise SourceError(f"{NAME}: cgroup {t.cgroup} of process {pid}: {e}") from e
        except cgroups.CgroupError as e:
            raise SourceError(f"{NAME}: {e}") from e
