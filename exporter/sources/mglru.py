"""What the mglru sources share: a BPF hash of the pages the kernel's own MGLRU found young,
drained each harvest and joined, in numpy, with the resident set.

The sources differ only in how the young pages reach the hash and how an aging is started:

* ``mglru-fexit`` (stock kernels): fexit programs on ptep/pmdp_test_and_clear_young; aging
  through /sys/kernel/debug/lru_gen;
* ``mglru-hook`` (kernels with kernel-patch/'s series): the series' tracepoints; aging through
  its kfunc, walking only the followed processes.

Aging, the ``mglru_aging`` setting (Config, passed as the ``aging`` argument):

* ``active`` (default): every cycle forces one MGLRU aging of the target's memcg on each node.
  That walk is synchronous, so the interval closes exactly at the cycle. **Cost:** the
  walk visits every mm charged to the memcg, not only the target's (mglru-hook's filter
  avoids that), and it adds an MGLRU generation each time, which also feeds the kernel's
  reclaim decisions: put targets in their own cgroup to bound both.
* ``passive``: no aging from us at all; the source only reports what the kernel's own aging
  and reclaim found young during the interval. Without memory pressure the kernel does not
  look, and nothing is reported; pages the kernel has not looked at since they were last
  touched are reported when it does.

TLB: clearing an Accessed bit does not flush the TLB, and the CPU sets the bit again only
when it walks the page table, so a page whose translation stays cached looks idle however
hot it is (measured in the lab: 300 of 819 hot pages missed per interval). The kernel accepts
that; an exact heatmap does not. After each aging, active mode therefore ends with a full
TLB flush of the target (``clear_refs`` 4), the ``tlb_flush`` setting:
``auto`` (default) only where the kernel has no soft-dirty tracking, since on a
CONFIG_MEM_SOFT_DIRTY kernel that write also clears the soft-dirty bits (CRIU) and costs a
minor fault on the next write to each page, the same rule as ptwalk; ``always``; ``never``.

Resident set: ptwalk's read-only BPF page-table scan (``pagetable.PageTableScan``), the same
task_vma iterator program ptwalk uses, without its aging: these sources never write
clear_refs 1, since the kernel's MGLRU aging owns the Accessed bits. The scan reads them but
its Accessed bits are not used; a page is accessed when the young hash names it. It gives,
per present page, the type (a private file mapping's written pages are anonymous COW copies),
THP (mapped by a PMD), and the NUMA node from the PFN, without CAP_SYS_ADMIN; zero pages and
other special PTEs are left out by the walk, hugetlb pages only counted. Before, pagemap was
read here: about 10x the scan's cost per page.

Kernel-side limits, reported as "not accessed" because the kernel never looks:
* VMAs with MADV_RANDOM or MADV_SEQUENTIAL (VM_RAND_READ / VM_SEQ_READ) and mlocked VMAs
  are skipped by MGLRU's walk;
* pages not yet on an LRU list (still in a per-CPU batch) or charged to another memcg;
* with swappiness 0 (passive mode, no swap), anonymous and shmem pages are never aged.
"""

from __future__ import annotations

import ctypes as C
import enum
import logging
import mmap
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pageheat.kernel import cgroups, lrugen, procfs
from pageheat.kernel.libbpf import (
    BpfObject,
    BtfMismatch,
    LibbpfError,
    Link,
    map_delete,
    map_lookup_and_delete_batch,
    map_update,
)
from pageheat.kernel.numa import NodeMap
from pageheat.sources import MglruAging, TlbFlush
from pageheat.sources.base import Harvest, LruGenerations, Pages, SourceError, TargetGone, Vmas, cpu_time
from pageheat.sources.objects import object_path
from pageheat.sources.pagetable import PageTableScan, ScanReport

log = logging.getLogger(__name__)

# The Python half of bpf/young.h, checked against the object's BTF at every load (BTF_TYPES).
_KEY = np.dtype([("tgid", "<u4"), ("pad", "<u4"), ("vpn", "<u8")])
STATS = np.dtype([(k, "<u8") for k in (
    "calls", "young", "target_young", "pte_young", "pmd_young", "pmd_nonleaf", "dropped",
    "look_around", "mm_walked", "mm_skipped")])


class YoungFlag(enum.IntFlag):
    """enum young_flag: bits of the young hash's values."""

    PTE = 1 << 0
    PMD = 1 << 1


_YOUNG_PTE, _YOUNG_PMD = YoungFlag.PTE, YoungFlag.PMD
# C name -> Python description, for Btf.check (tests/test_unit_btf.py checks them too).
BTF_TYPES: tuple[dict[str, Any], dict[str, tuple[type[enum.Enum], str]]] = (
    {"young_key": _KEY, "young_stats": STATS}, {"young_flag": (YoungFlag, "YOUNG_")})
_BATCH = 1 << 16
_DEFAULT_YOUNG_CAPACITY = 1 << 22  # 16 GiB of young 4 KiB pages per interval, all targets

_YOUNG_REC = np.dtype([("tgid", "<u4"), ("vpn", "<u8"), ("flags", "<u4")])


@dataclass
class Target:
    memcg_id: int  # lru_gen's memcg id, -1 when debugfs is not used
    nodes: list[int]  # nodes where an aging is requested
    max_seq: dict[int, int]  # per node, at the last cycle: how often the kernel aged since
    clear_refs: procfs.ClearRefs | None = None  # for the TLB flush, through a live thread
    cgroup: str = "/"  # cgroup v2 path
    cgroup_id: int = 0  # its cgroup v2 id, once looked up (mglru-hook)


class YoungPagesSource:
    """The shared part of the mglru sources. Subclasses say which BPF programs to load
    (``programs``) and how to age (``age_memcg``); everything else is here."""

    name = "young"
    object_name = ""  # exporter/bpf/<object_name>.bpf.o
    attach_skip: tuple[str, ...] = ()  # loaded but not attached (run by BPF_PROG_TEST_RUN)
    needs_lru_gen_write = False  # active aging writes /sys/kernel/debug/lru_gen
    btf_types = BTF_TYPES  # the shared structs and enums, checked against the object's BTF

    def __init__(self, aging: MglruAging | str = MglruAging.ACTIVE, obj: Path | None = None,
                 nodes: NodeMap | None = None, young_capacity: int = _DEFAULT_YOUNG_CAPACITY,
                 swappiness: int = 1, tlb_flush: TlbFlush | str = TlbFlush.AUTO,
                 bpf_dir: Path | None = None) -> None:
        name = self.name
        self.aging = MglruAging(aging)  # the Config passes mglru_aging and tlb_flush
        if not 1 <= swappiness <= 200:
            raise SourceError(f"{name}: swappiness must be 1..200 (0 would skip anonymous memory)")
        self.swappiness = swappiness
        self.tlb_flush = self.aging == "active" and TlbFlush(tlb_flush).wanted(procfs.soft_dirty_tracking)
        why = lrugen.mglru_state()
        if why:
            raise SourceError(f"{name}: {why}; use --source ptwalk")
        if self.aging == "active" and self.needs_lru_gen_write \
                and not os.access(lrugen.LRU_GEN, os.W_OK):
            raise SourceError(f"{name}: {lrugen.LRU_GEN} is not writable (mount debugfs, run as "
                              "root) or set mglru_aging to passive (--mglru-aging passive)")
        self._nodes = nodes or NodeMap.from_sysfs()
        # Aging is per node with memory (a memoryless node has no LRU lists).
        self.memory_nodes = sorted(set(self._nodes.node.tolist())) or [0]
        self._bpf_dir = bpf_dir
        self._path = obj or object_path(self.object_name, bpf_dir)
        self._targets: dict[int, Target] = {}
        self._pending: dict[int, list[np.ndarray]] = {}  # tgid -> drained keys+flags, not yet harvested
        self._links: list[Link] = []
        self._obj: BpfObject | None = None
        self._stats_map: mmap.mmap | None = None
        self._load(young_capacity)
        self._dropped_seen = self.stats().get("dropped", 0)
        try:
            # Read-only: PG_young is ptwalk's answer to DAMON clearing Accessed bits; here the
            # Accessed bits are MGLRU's and are not read.
            self._scan = PageTableScan(nodes=self._nodes, check_young=False, bpf_dir=self._bpf_dir)
        except SourceError as e:
            self.close()
            raise SourceError(f"{name}: resident set: {e}") from e

    # -- what subclasses provide ---------------------------------------------------------------
    def programs(self) -> dict[str, bool]:
        """Program name -> load it. Raises SourceError when the kernel lacks a required hook."""
        raise NotImplementedError

    def load_hint(self, e: LibbpfError) -> str:
        """What to tell the user when loading or attaching failed with ``e``."""
        return ""

    def rodata(self) -> dict[str, int]:
        """The object's const volatile settings, fixed at load."""
        return {}

    def age_memcg(self, pid: int, t: Target) -> int:
        """Age the target's memcg on each node; the number of aging requests made."""
        raise NotImplementedError

    # -- loading -----------------------------------------------------------------------------
    def _load(self, capacity: int) -> None:
        autoload = self.programs()
        try:
            obj = BpfObject(self._path, max_entries={"young": capacity}, autoload=autoload,
                            rodata=self.rodata())
        except LibbpfError as e:
            raise SourceError(f"{self.name}: cannot load {self._path.name}: {e.strerror}"
                              f"{self.load_hint(e)}") from e
        self._obj = obj
        try:
            try:
                obj.btf.check(*self.btf_types)
            except BtfMismatch as e:
                raise SourceError(f"{self.name}: {e}; rebuild the BPF objects (bpf/build.sh)"
                                  ) from None
            for prog, load in autoload.items():
                if load and prog not in self.attach_skip:
                    self._links.append(obj.attach(prog))
        except LibbpfError as e:
            self.close()
            raise SourceError(f"{self.name}: cannot attach {prog}: {e.strerror}"
                              f"{self.load_hint(e)}") from e
        except SourceError:
            self.close()
            raise
        self._stats_map = obj.mmap_array("stats")
        self._young_fd = obj.map_fd("young")
        self._targets_fd = obj.map_fd("targets")

    def stats(self) -> dict[str, int]:
        """The BPF counters since load (all mms and targets)."""
        if self._stats_map is None:
            return {}
        row = np.frombuffer(self._stats_map, dtype=STATS, count=1)[0]
        return {k: int(row[k]) for k in STATS.names}

    # -- Source interface ----------------------------------------------------------------------
    def attach(self, pid: int) -> None:
        if pid in self._targets:
            return
        try:
            cg = cgroups.cgroup_path(pid)
            self._scan.attach(pid)
            refs = procfs.ClearRefs(pid) if self.tlb_flush else None
        except (FileNotFoundError, ProcessLookupError) as e:
            self._scan.detach(pid)
            raise TargetGone(pid) from e
        except cgroups.CgroupError as e:
            self._scan.detach(pid)
            raise SourceError(f"{self.name}: {e}") from e
        except BaseException:
            self._scan.detach(pid)  # never half attached (TargetGone, PermissionError)
            raise
        try:
            if self.aging == "active" and self.needs_lru_gen_write:
                memcg = self._memcg(cg)
            else:
                memcg = self._memcg_or_none(cg)
        except SourceError:
            if refs is not None:
                refs.close()
            self._scan.detach(pid)
            raise
        try:
            map_update(self._targets_fd, C.c_uint32(pid), C.c_uint32(1))
        except LibbpfError as e:
            if refs is not None:
                refs.close()
            self._scan.detach(pid)
            raise SourceError(f"{self.name}: cannot add target {pid}: "
                              f"{os.strerror(e.errno or 1)} (at most 1024 targets)") from e
        nodes = sorted(memcg.nodes) if memcg.id >= 0 else self.memory_nodes
        t = Target(memcg.id, nodes, {n: memcg.max_seq(n) for n in memcg.nodes}, refs, cg)
        self._targets[pid] = t
        try:
            if self.aging == "active":
                self._age(pid, t)
            self._drain()
            self._pending.pop(pid, None)  # young before the first interval: not counted
            if not procfs.pid_exists(pid):
                raise TargetGone(pid)
        except (TargetGone, SourceError):
            self.detach(pid)
            raise

    def cycle(self, pid: int) -> Harvest:
        t = self._targets[pid]
        t0 = cpu_time()
        writes = self._age(pid, t) if self.aging == "active" else 0
        t1 = cpu_time()
        now = time.monotonic()
        self._drain()
        young = self._pending.pop(pid, [])
        pages, vmas, report = resident(self._scan, pid, young)
        t2 = cpu_time()
        dropped = self.stats().get("dropped", 0)  # young pages the BPF hash had no room for
        added, lru_gen = self._kernel_agings(t)
        counters = {"tlb_flush": int(t.clear_refs is not None), **report.counters}
        truncations = replace(report.truncations, young_map_full=dropped - self._dropped_seen)
        self._dropped_seen = dropped
        return Harvest(pid, now, pages, vmas, t2 - t1, t1 - t0, counters, lru_gen,
                       truncations=truncations, unmonitored=report.unmonitored,
                       aging_writes=writes, generations_added=added,
                       address_space=report.address_space)

    def detach(self, pid: int) -> None:
        if getattr(self, "_scan", None) is not None:
            self._scan.detach(pid)
        t = self._targets.pop(pid, None)
        if t is None:
            return
        if t.clear_refs is not None:
            t.clear_refs.close()
        self._pending.pop(pid, None)
        if self._obj is not None:
            map_delete(self._targets_fd, C.c_uint32(pid))

    def close(self) -> None:
        for pid in list(self._targets):
            self.detach(pid)
        for link in self._links:
            link.destroy()
        self._links = []
        if getattr(self, "_scan", None) is not None:
            self._scan.close()
            self._scan = None
        if self._stats_map is not None:
            self._stats_map.close()
            self._stats_map = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    # -- internals -----------------------------------------------------------------------------
    def _memcg(self, cgroup: str) -> lrugen.Memcg:
        try:
            return lrugen.memcg_of(cgroup, lrugen.read())
        except lrugen.LruGenError as e:
            raise SourceError(f"{self.name}: {e.strerror}") from e

    def _memcg_or_none(self, cgroup: str) -> lrugen.Memcg:
        """Without a debugfs aging, lru_gen is only read for the counters: run without them
        when it cannot be read."""
        try:
            return self._memcg(cgroup)
        except SourceError as e:
            log.warning("%s: no generation counters: %s", self.name, e)
            return lrugen.Memcg(-1, cgroup)

    def _age(self, pid: int, t: Target) -> int:
        """One forced MGLRU aging of the target's memcg on each node, then the TLB flush."""
        writes = self.age_memcg(pid, t)
        if t.clear_refs is not None:
            try:
                t.clear_refs.write(b"4")  # ends with flush_tlb_mm(); see the module doc
            except (ProcessLookupError, FileNotFoundError) as e:
                raise TargetGone(pid) from e
        return writes

    def _kernel_agings(self, t: Target) -> tuple[int | None, LruGenerations | None]:
        """Generations added to the target's memcg since the last cycle (by anyone:
        Harvest.generations_added); and the generation histogram: how much of the memcg sits
        in each age rank. (None, None) when lru_gen cannot be read or no longer lists the
        memcg."""
        try:
            memcg = lrugen.read().get(t.memcg_id) if t.memcg_id >= 0 else None
        except lrugen.LruGenError:
            return None, None
        if memcg is None:
            return None, None
        added = sum(memcg.max_seq(n) - t.max_seq.get(n, memcg.max_seq(n)) for n in memcg.nodes)
        t.max_seq = {n: memcg.max_seq(n) for n in memcg.nodes}
        return added, LruGenerations.from_rows(lrugen.histogram(memcg))

    def _drain(self) -> None:
        """Move every entry of the young hash into per-target pending arrays."""
        keys = np.zeros(_BATCH, dtype=_KEY)
        values = np.zeros(_BATCH, dtype=np.uint32)
        token_in, token_out = C.c_uint64(0), C.c_uint64(0)
        first = True
        chunks: list[tuple[np.ndarray, np.ndarray]] = []
        while True:
            try:
                n, done = map_lookup_and_delete_batch(
                    self._young_fd, None if first else token_in, token_out, keys.ctypes.data,
                    values.ctypes.data, _BATCH)
            except LibbpfError as e:
                raise SourceError(f"{self.name}: draining the young map: {os.strerror(e.errno)}") from e
            if n:
                chunks.append((keys[:n].copy(), values[:n].copy()))
            if done:
                break  # the whole map was read
            token_in.value = token_out.value
            first = False
        if not chunks:
            return
        k = np.concatenate([c[0] for c in chunks])
        v = np.concatenate([c[1] for c in chunks])
        rec = np.empty(len(k), dtype=_YOUNG_REC)
        rec["tgid"], rec["vpn"], rec["flags"] = k["tgid"], k["vpn"], v
        for tgid in np.unique(rec["tgid"]).tolist():
            if tgid in self._targets:  # entries of a just-detached target are dropped
                self._pending.setdefault(tgid, []).append(rec[rec["tgid"] == tgid])


def resident(scan: PageTableScan, pid: int, young: list[np.ndarray]) -> tuple[Pages, Vmas, ScanReport]:
    """The resident pages of an attached ``pid`` from the read-only page-table scan, marked
    accessed where the kernel found them young (``young``: _YOUNG_REC arrays; a PMD record
    names the first vpn of its 2 MiB). The scan's report, its counters with young_pages,
    young_not_resident, young_huge, zero_pages (special PTEs left out, a special PMD
    counting 512) added. Raises TargetGone."""
    pages, vmas, report = scan.harvest(pid)
    counters = report.counters
    rec = np.concatenate(young) if young else np.zeros(0, dtype=_YOUNG_REC)
    pte = rec["vpn"][(rec["flags"] & _YOUNG_PTE) != 0]
    huge = rec["vpn"][(rec["flags"] & _YOUNG_PMD) != 0]
    young_vpn = np.unique(np.concatenate([pte, (huge[:, None] + np.arange(512, dtype=np.uint64)
                                                ).reshape(-1)]))
    vpn = pages.vpn
    pos = np.searchsorted(vpn, young_vpn)
    hit = pos < len(vpn)
    hit[hit] = vpn[pos[hit]] == young_vpn[hit]
    accessed = np.zeros(len(vpn), dtype=bool)
    accessed[pos[hit]] = True
    counters.update({"young_pages": int(len(young_vpn)), "young_not_resident": int((~hit).sum()),
                     "young_huge": int(len(huge)),
                     "zero_pages": counters.get("special_ptes", 0) + 512 * counters.get("special_pmds", 0)})
    return Pages(vpn, accessed, pages.node, pages.type, pages.thp, pages.vma), vmas, report
