"""What the mglru sources share: a BPF hash of the pages the kernel's own MGLRU found young,
drained each harvest and joined, in numpy, with the resident set.

The sources differ only in how the young pages reach the hash and how an aging is started:

* ``mglru-fexit`` (stock kernels): fexit programs on ptep/pmdp_test_and_clear_young; aging
  through /sys/kernel/debug/lru_gen;
* ``mglru-hook`` (kernels with kernel-patch/'s series): the series' tracepoints; aging through
  its kfunc, walking only the followed processes.

Aging, ``PAGEHEAT_MGLRU_AGING`` (or the ``aging`` argument):

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
TLB flush of the target (``clear_refs`` 4), ``PAGEHEAT_TLB_FLUSH``:
``auto`` (default) only where the kernel has no soft-dirty tracking, since on a
CONFIG_MEM_SOFT_DIRTY kernel that write also clears the soft-dirty bits (CRIU) and costs a
minor fault on the next write to each page, the same rule as ptwalk; ``always``; ``never``.

Resident set: /proc/PID/pagemap, read per VMA into numpy (PFN -> NUMA node through
NodeMap; bit 61 tells a private file mapping's COW copies, which are anonymous). Chosen over
reusing the ptwalk iterator because it needs no direct-map probing and no second BPF object,
and it cannot disturb the Accessed bits. A page is reported as mapped by a PMD (``thp``) when
its whole aligned 2 MiB is present, physically contiguous and 2 MiB aligned, and
/proc/kpageflags marks the head as a THP.

Kernel-side limits, reported as "not accessed" because the kernel never looks:
* VMAs with MADV_RANDOM or MADV_SEQUENTIAL (VM_RAND_READ / VM_SEQ_READ) and mlocked VMAs
  are skipped by MGLRU's walk;
* pages not yet on an LRU list (still in a per-CPU batch) or charged to another memcg;
* with swappiness 0 (passive mode, no swap), anonymous and shmem pages are never aged.
"""

from __future__ import annotations

import ctypes as C
import errno
import logging
import mmap
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import lrugen, procfs
from ..bpfobjects import object_path
from ..libbpf import BpfObject, LibbpfError, Link, lib
from ..numa import NodeMap
from .base import Harvest, Pages, PageType, SourceError, TargetGone, VmaKind, Vmas
from .ptwalk import soft_dirty_tracking

log = logging.getLogger(__name__)

AGING_ENV = "PAGEHEAT_MGLRU_AGING"
TLB_ENV = "PAGEHEAT_TLB_FLUSH"  # shared with ptwalk
BTF = Path("/sys/kernel/btf/vmlinux")

_KEY = np.dtype([("tgid", "<u4"), ("pad", "<u4"), ("vpn", "<u8")])
# struct young_stats in bpf/young.h
STATS = np.dtype([(k, "<u8") for k in (
    "calls", "young", "target_young", "pte_young", "pmd_young", "pmd_nonleaf", "dropped",
    "look_around", "mm_walked", "mm_skipped")])
_YOUNG_PTE, _YOUNG_PMD = 1, 2
_BATCH = 1 << 16
_DEFAULT_YOUNG_CAPACITY = 1 << 22  # 16 GiB of young 4 KiB pages per interval, all targets

_PM_PRESENT = np.uint64(1 << 63)
_PM_FILE_OR_SHARED = np.uint64(1 << 61)
_PM_PFN = np.uint64((1 << 55) - 1)
_KPF_THP = 22
_PAGEMAP_CHUNK = 1 << 21  # pages per pread: 16 MiB of pagemap at most in memory per VMA chunk
_SHMEM_NAMES = ("/memfd:", "/dev/zero", "/SYSV", "/dev/shm/", "[anon_shmem:")
_SHMEM_FS = {"tmpfs", "ramfs", "shm", "devtmpfs"}


def _declare(name: str, restype: object, argtypes: list[object]) -> Any:
    """libbpf calls that pageheat.libbpf does not bind (map element and batch ops)."""
    fn = getattr(lib(), name)
    fn.restype, fn.argtypes = restype, argtypes
    return fn


def _cpu() -> float:
    return time.thread_time()


@dataclass
class Target:
    memcg_id: int  # lru_gen's memcg id, -1 when debugfs is not used
    nodes: list[int]  # nodes where an aging is requested
    max_seq: dict[int, int]  # per node, at the last cycle: how often the kernel aged since
    shmem_mounts: list[str] = field(default_factory=list)
    clear_refs: procfs.ClearRefs | None = None  # for the TLB flush, through a live thread
    cgroup: str = "/"  # cgroup v2 path
    cgroup_id: int = 0  # its cgroup v2 id, once looked up (mglru-hook)
    hugetlb_mounts: tuple[str, ...] = ()


class YoungPagesSource:
    """The shared part of the mglru sources. Subclasses say which BPF programs to load
    (``programs``) and how to age (``age_memcg``); everything else is here."""

    name = "young"
    object_name = ""  # exporter/bpf/<object_name>.bpf.o
    attach_skip: tuple[str, ...] = ()  # loaded but not attached (run by BPF_PROG_TEST_RUN)
    needs_lru_gen_write = False  # active aging writes /sys/kernel/debug/lru_gen

    def __init__(self, aging: str | None = None, obj: Path | None = None,
                 nodes: NodeMap | None = None, young_capacity: int = _DEFAULT_YOUNG_CAPACITY,
                 swappiness: int = 1, tlb_flush: str | None = None) -> None:
        name = self.name
        self.aging = (aging or "active").lower()  # the Config passes mglru_aging
        if self.aging not in ("active", "passive"):
            raise SourceError(f"{name}: aging must be active or passive, not {self.aging!r} "
                              f"(${AGING_ENV})")
        if not 1 <= swappiness <= 200:
            raise SourceError(f"{name}: swappiness must be 1..200 (0 would skip anonymous memory)")
        self.swappiness = swappiness
        flush = (tlb_flush or "auto").lower()  # the Config passes tlb_flush
        if flush not in ("auto", "always", "never"):
            raise SourceError(f"{name}: TLB flush must be auto, always or never, not {flush!r} "
                              f"(${TLB_ENV})")
        self.tlb_flush = self.aging == "active" and (
            flush == "always" or (flush == "auto" and not soft_dirty_tracking()))
        why = lrugen.mglru_state()
        if why:
            raise SourceError(f"{name}: {why}; use --source ptwalk")
        if self.aging == "active" and self.needs_lru_gen_write \
                and not os.access(lrugen.LRU_GEN, os.W_OK):
            raise SourceError(f"{name}: {lrugen.LRU_GEN} is not writable (mount debugfs, run as "
                              f"root) or use {AGING_ENV}=passive")
        self._nodes = nodes or NodeMap.from_sysfs()
        # Aging is per node with memory (a memoryless node has no LRU lists).
        self.memory_nodes = sorted(set(self._nodes.node.tolist())) or [0]
        self._path = obj or object_path(self.object_name)
        self._targets: dict[int, Target] = {}
        self._pending: dict[int, list[np.ndarray]] = {}  # tgid -> drained keys+flags, not yet harvested
        self._links: list[Link] = []
        self._obj: BpfObject | None = None
        self._stats_map: mmap.mmap | None = None
        self._update = _declare("bpf_map_update_elem", C.c_int,
                                [C.c_int, C.c_void_p, C.c_void_p, C.c_uint64])
        self._delete = _declare("bpf_map_delete_elem", C.c_int, [C.c_int, C.c_void_p])
        self._batch = _declare("bpf_map_lookup_and_delete_batch", C.c_int,
                               [C.c_int, C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p,
                                C.POINTER(C.c_uint32), C.c_void_p])
        self._load(young_capacity)
        self._dropped_seen = self.stats().get("dropped", 0)
        self._zero = ZeroPages.find()
        if self._zero is None:
            log.warning("%s: /proc/self/pagemap hides PFNs (no CAP_SYS_ADMIN): pages mapping the "
                        "shared zero page cannot be told apart and count as resident", name)

    # -- what subclasses provide ---------------------------------------------------------------
    def programs(self) -> dict[str, bool]:
        """Program name -> load it. Raises SourceError when the kernel lacks a required hook."""
        raise NotImplementedError

    def load_hint(self, e: LibbpfError) -> str:
        """What to tell the user when loading or attaching failed with ``e``."""
        return ""

    def age_memcg(self, pid: int, t: Target) -> int:
        """Age the target's memcg on each node; the number of aging requests made."""
        raise NotImplementedError

    # -- loading -----------------------------------------------------------------------------
    def _load(self, capacity: int) -> None:
        autoload = self.programs()
        try:
            obj = BpfObject(self._path, max_entries={"young": capacity}, autoload=autoload)
        except LibbpfError as e:
            raise SourceError(f"{self.name}: cannot load {self._path.name}: {e.strerror}"
                              f"{self.load_hint(e)}") from e
        self._obj = obj
        try:
            if obj.value_size("stats") != STATS.itemsize:
                raise SourceError(f"{self.name}: map stats has {obj.value_size('stats')}-byte "
                                  f"values, exporter expects {STATS.itemsize}: rebuild bpf/")
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
            cg = lrugen.cgroup_path(pid)
            mounts = _shmem_mounts(pid)
            huge_mounts = tuple(_shmem_mounts(pid, {"hugetlbfs"}))
            refs = procfs.ClearRefs(pid) if self.tlb_flush else None
        except (FileNotFoundError, ProcessLookupError) as e:
            raise TargetGone(pid) from e
        except lrugen.LruGenError as e:
            raise SourceError(f"{self.name}: {e.strerror}") from e
        try:
            if self.aging == "active" and self.needs_lru_gen_write:
                memcg = self._memcg(cg)
            else:
                memcg = self._memcg_or_none(cg)
        except SourceError:
            if refs is not None:
                refs.close()
            raise
        key = C.c_uint32(pid)
        one = C.c_uint32(1)
        if self._update(self._targets_fd, C.byref(key), C.byref(one), 0):
            if refs is not None:
                refs.close()
            raise SourceError(f"{self.name}: cannot add target {pid}: "
                              f"{os.strerror(C.get_errno() or 1)} (at most 1024 targets)")
        nodes = sorted(memcg.nodes) if memcg.id >= 0 else self.memory_nodes
        t = Target(memcg.id, nodes, {n: memcg.max_seq(n) for n in memcg.nodes}, mounts, refs, cg,
                   hugetlb_mounts=huge_mounts)
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
        t0 = _cpu()
        writes = self._age(pid, t) if self.aging == "active" else 0
        t1 = _cpu()
        now = time.monotonic()
        self._drain()
        young = self._pending.pop(pid, [])
        try:
            maps = procfs.read_maps(pid)
            if not maps:
                raise TargetGone(pid)  # a zombie: no mm left
            pages, vmas, extra = _resident(pid, maps, young, self._nodes, t.shmem_mounts,
                                           self._zero, t.hugetlb_mounts)
        except (FileNotFoundError, ProcessLookupError) as e:
            raise TargetGone(pid) from e
        t2 = _cpu()
        dropped = self.stats().get("dropped", 0)  # young pages the BPF hash had no room for
        counters = {"aging_writes": writes, "tlb_flush": int(t.clear_refs is not None), **extra,
                    "young_dropped": dropped - self._dropped_seen, **self._kernel_agings(t)}
        self._dropped_seen = dropped
        return Harvest(pid, now, pages, vmas, t2 - t1, t1 - t0, counters)

    def detach(self, pid: int) -> None:
        t = self._targets.pop(pid, None)
        if t is None:
            return
        if t.clear_refs is not None:
            t.clear_refs.close()
        self._pending.pop(pid, None)
        key = C.c_uint32(pid)
        if self._obj is not None:
            self._delete(self._targets_fd, C.byref(key))

    def close(self) -> None:
        for pid in list(self._targets):
            self.detach(pid)
        for link in self._links:
            link.destroy()
        self._links = []
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

    def _kernel_agings(self, t: Target) -> dict[str, int]:
        """Generations added to the target's memcg since the last cycle (by anyone), and the
        generation histogram: how much of the memcg sits in each age rank."""
        try:
            memcg = lrugen.read().get(t.memcg_id) if t.memcg_id >= 0 else None
        except lrugen.LruGenError:
            return {}
        if memcg is None:
            return {}
        out = {"generations_added": sum(memcg.max_seq(n) - t.max_seq.get(n, memcg.max_seq(n))
                                        for n in memcg.nodes)}
        t.max_seq = {n: memcg.max_seq(n) for n in memcg.nodes}
        for node, rank, anon, file in lrugen.histogram(memcg):
            out[f"lru_gen_node{node}_gen{rank}_anon"] = anon
            out[f"lru_gen_node{node}_gen{rank}_file"] = file
        return out

    def _drain(self) -> None:
        """Move every entry of the young hash into per-target pending arrays."""
        keys = np.zeros(_BATCH, dtype=_KEY)
        values = np.zeros(_BATCH, dtype=np.uint32)
        token_in, token_out = C.c_uint64(0), C.c_uint64(0)
        first = True
        chunks: list[tuple[np.ndarray, np.ndarray]] = []
        while True:
            count = C.c_uint32(_BATCH)
            C.set_errno(0)
            rc = self._batch(self._young_fd, None if first else C.byref(token_in),
                             C.byref(token_out), keys.ctypes.data, values.ctypes.data,
                             C.byref(count), None)
            err = C.get_errno()
            n = count.value
            if n:
                chunks.append((keys[:n].copy(), values[:n].copy()))
            if rc:
                if err == errno.ENOENT:
                    break  # the whole map was read
                raise SourceError(f"{self.name}: draining the young map: {os.strerror(err or -rc)}")
            token_in.value = token_out.value
            first = False
        if not chunks:
            return
        k = np.concatenate([c[0] for c in chunks])
        v = np.concatenate([c[1] for c in chunks])
        rec = np.empty(len(k), dtype=[("tgid", "<u4"), ("vpn", "<u8"), ("flags", "<u4")])
        rec["tgid"], rec["vpn"], rec["flags"] = k["tgid"], k["vpn"], v
        for tgid in np.unique(rec["tgid"]).tolist():
            if tgid in self._targets:  # entries of a just-detached target are dropped
                self._pending.setdefault(tgid, []).append(rec[rec["tgid"] == tgid])


def kernel_functions(names: list[str], btf: Path = BTF) -> set[str]:
    """Which of ``names`` the kernel's BTF knows. A cheap check on the string table: libbpf
    would otherwise fail the load with a bare ESRCH."""
    try:
        data = btf.read_bytes()
    except OSError:
        return set()
    return {n for n in names if b"\0" + n.encode() + b"\0" in data}


def _shmem_mounts(pid: int, fstypes: set[str] = _SHMEM_FS) -> list[str]:
    """Mount points (in the target's namespace) of these file systems (shmem), longest first."""
    from ..cgroups import _unescape

    out = []
    # Bytes, split at \n only: mount points are any bytes (mountinfo escapes only space, tab,
    # newline and backslash); a zombie leader has no mount namespace left: a live thread's.
    with open(procfs.task_dir(pid) / "mountinfo", "rb") as f:
        text = procfs.decode(f.read())
    for line in text.split("\n"):
        parts = line.split(" - ", 1)
        if len(parts) == 2 and parts[1].split(" ")[0] in fstypes:
            out.append(_unescape(parts[0].split(" ")[4]))
    return sorted(out, key=len, reverse=True)


def vma_kind(m: procfs.Mapping, shmem_mounts: list[str]) -> VmaKind:
    """What a /proc/PID/maps line maps, in ptwalk's terms."""
    name = m.name
    if name == "" or name.startswith("[anon:"):
        return VmaKind.ANON
    if name == "[heap]":
        return VmaKind.HEAP
    if name.startswith("[stack"):
        return VmaKind.STACK
    if name.startswith(_SHMEM_NAMES):
        return VmaKind.SHMEM
    if name.startswith("["):
        return VmaKind.OTHER  # [vdso], [vvar], [vsyscall]: special mappings, not on any LRU
    path = name.removesuffix(" (deleted)")
    if any(path == p or path.startswith(p.rstrip("/") + "/") for p in shmem_mounts if p != "/"):
        return VmaKind.SHMEM
    return VmaKind.FILE


_KIND_TYPE = np.array([PageType.ANON, PageType.FILE, PageType.SHMEM, PageType.ANON,
                       PageType.ANON, PageType.ANON], dtype=np.uint8)


def _resident(pid: int, maps: list[procfs.Mapping], young: list[np.ndarray], nodes: NodeMap,
              shmem_mounts: list[str], zero: ZeroPages | None = None,
              hugetlb_mounts: tuple[str, ...] = ()) -> tuple[Pages, Vmas, dict[str, int]]:
    """The resident pages from /proc/PID/pagemap, marked accessed where the kernel found them
    young. One pread per VMA (per 16 MiB of pagemap for huge VMAs); everything else is numpy.
    The shared zero pages are left out (pagemap reports them present; they are nobody's
    memory and MGLRU never ages them); hugetlb pages are only counted (``unmonitored_hugetlb``):
    MGLRU does not age hugetlb either."""
    kinds = np.array([vma_kind(m, shmem_mounts) for m in maps], dtype=np.uint8)
    hugetlb = np.array([is_hugetlb(m, hugetlb_mounts) for m in maps], dtype=bool)
    kinds[hugetlb] = VmaKind.OTHER
    n_hugetlb = 0
    accessible = np.array([m.perms[:3] != "---" for m in maps], dtype=bool)
    vmas = Vmas(np.array([m.start for m in maps], dtype=np.uint64),
                np.array([m.end for m in maps], dtype=np.uint64), kinds, accessible,
                [m.name for m in maps])
    vpn_parts, ent_parts, vma_parts = [], [], []
    fd = os.open(procfs.task_dir(pid) / "pagemap", os.O_RDONLY)  # a zombie leader's is empty
    try:
        for i, m in enumerate(maps):
            if not hugetlb[i] and (not accessible[i] or kinds[i] == VmaKind.OTHER):
                continue
            first, last = m.start >> 12, m.end >> 12
            for lo in range(first, last, _PAGEMAP_CHUNK):
                n = min(_PAGEMAP_CHUNK, last - lo)
                ent = np.frombuffer(os.pread(fd, n * 8, lo * 8), dtype="<u8")
                idx = np.flatnonzero(ent & _PM_PRESENT)
                if hugetlb[i]:
                    n_hugetlb += len(idx)
                elif len(idx):
                    vpn_parts.append(idx.astype(np.uint64) + np.uint64(lo))
                    ent_parts.append(ent[idx])
                    vma_parts.append(np.full(len(idx), i, dtype=np.int32))
    finally:
        os.close(fd)
    cat = lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt)  # noqa: E731
    vpn, ent, vma = cat(vpn_parts, np.uint64), cat(ent_parts, np.uint64), cat(vma_parts, np.int32)
    keep = ~zero.mask(ent) if zero is not None else np.ones(len(ent), dtype=bool)
    n_zero = int(len(keep) - np.count_nonzero(keep))
    vpn, ent, vma = vpn[keep], ent[keep], vma[keep]
    pfn = ent & _PM_PFN

    ptype = _KIND_TYPE[kinds[vma]]
    shared = np.array([m.perms[3:4] == "s" for m in maps], dtype=bool)
    filelike = (kinds[vma] == VmaKind.FILE) | (kinds[vma] == VmaKind.SHMEM)
    cow = filelike & ~shared[vma] & ((ent & _PM_FILE_OR_SHARED) == 0)
    ptype[cow] = PageType.ANON  # a private file mapping's written page is an anonymous copy

    thp = _pmd_mapped(vpn, pfn)
    node = nodes.node_of(pfn)

    rec = np.concatenate(young) if young else np.zeros(0, dtype=[("tgid", "<u4"), ("vpn", "<u8"),
                                                                  ("flags", "<u4")])
    pte = rec["vpn"][(rec["flags"] & _YOUNG_PTE) != 0]
    huge = rec["vpn"][(rec["flags"] & _YOUNG_PMD) != 0]
    young_vpn = np.unique(np.concatenate([pte, (huge[:, None] + np.arange(512, dtype=np.uint64)
                                                ).reshape(-1)]))
    pos = np.searchsorted(vpn, young_vpn)
    hit = pos < len(vpn)
    hit[hit] = vpn[pos[hit]] == young_vpn[hit]
    accessed = np.zeros(len(vpn), dtype=bool)
    accessed[pos[hit]] = True
    extra = {"young_pages": int(len(young_vpn)), "young_not_resident": int((~hit).sum()),
             "young_huge": int(len(huge)), "zero_pages": n_zero, "unmonitored_hugetlb": n_hugetlb}
    return Pages(vpn, accessed, node, ptype, thp, vma), vmas, extra


@dataclass(frozen=True)
class ZeroPages:
    """The frames of the kernel's shared zero pages: the 4 KiB one and the 2 MiB huge one
    (0: none seen). A private anonymous page that was only read maps one of them; pagemap
    reports it present, but it is not the process's memory (smaps leaves it out of Rss)."""

    pfn: int
    huge_pfn: int = 0

    def mask(self, ent: np.ndarray) -> np.ndarray:
        """Which pagemap entries (uint64) map a zero page: bool, same shape."""
        pfn = ent & _PM_PFN
        present = (ent & _PM_PRESENT) != 0
        hit = pfn == np.uint64(self.pfn) if self.pfn else np.zeros(len(ent), dtype=bool)
        if self.huge_pfn:
            hit |= (pfn >= np.uint64(self.huge_pfn)) & (pfn < np.uint64(self.huge_pfn + 512))
        return hit & present

    @classmethod
    def find(cls) -> ZeroPages | None:
        """Read a fresh page of our own (and a THP-eligible 2 MiB) and look up their frames in
        /proc/self/pagemap. None when pagemap hides PFNs (no CAP_SYS_ADMIN)."""
        huge = 2 << 20
        private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS  # shared anonymous memory is shmem
        small = mmap.mmap(-1, mmap.PAGESIZE, flags=private)
        big = mmap.mmap(-1, 2 * huge, flags=private)
        anchors = [C.c_char.from_buffer(small), C.c_char.from_buffer(big)]
        try:
            _ = small[0]  # a read fault maps the zero page
            off = -C.addressof(anchors[1]) % huge
            try:
                big.madvise(mmap.MADV_HUGEPAGE, off, huge)
                _ = big[off]  # the huge zero page, where THP uses it
            except (AttributeError, OSError):
                pass
            with open("/proc/self/pagemap", "rb") as f:
                pfn = _pagemap_pfn(f, C.addressof(anchors[0]))
                huge_pfn = _pagemap_pfn(f, C.addressof(anchors[1]) + off)
        finally:
            anchors.clear()
            small.close()
            big.close()
        if not pfn:
            return None
        # Where THP does not use the huge zero page, that read allocated a THP of our own:
        # keep only a frame that /proc/kpageflags calls a zero page.
        return cls(pfn, huge_pfn if huge_pfn % 512 == 0 and _kpf_zero(huge_pfn) else 0)


_KPF_ZERO_PAGE = 24


def _kpf_zero(pfn: int) -> bool:
    """/proc/kpageflags marks the frame KPF_ZERO_PAGE (the zero page or the huge zero page)."""
    if not pfn:
        return False
    try:
        with open("/proc/kpageflags", "rb") as f:
            f.seek(pfn * 8)
            return bool(int.from_bytes(f.read(8), "little") >> _KPF_ZERO_PAGE & 1)
    except OSError:
        return False


def _pagemap_pfn(f: Any, vaddr: int) -> int:
    f.seek((vaddr >> 12) * 8)
    ent = int.from_bytes(f.read(8), "little")
    return ent & int(_PM_PFN) if ent >> 63 else 0


_HUGETLB_NAMES = ("/anon_hugepage",)


def is_hugetlb(m: procfs.Mapping, hugetlb_mounts: tuple[str, ...] = ()) -> bool:
    """A MAP_HUGETLB mapping (/anon_hugepage) or a file on a hugetlbfs mount."""
    name = m.name.removesuffix(" (deleted)")
    return name.startswith(_HUGETLB_NAMES) or any(
        name.startswith(p.rstrip("/") + "/") for p in hugetlb_mounts)


def _pmd_mapped(vpn: np.ndarray, pfn: np.ndarray) -> np.ndarray:
    """Pages that look PMD-mapped: a whole aligned 2 MiB virtual range present, mapping 512
    physically contiguous frames starting 2 MiB aligned, whose head is a THP (kpageflags)."""
    thp = np.zeros(len(vpn), dtype=bool)
    if len(vpn) < 512:
        return thp
    starts = np.flatnonzero((vpn[:-511] & np.uint64(511)) == 0)
    starts = starts[(vpn[starts + 511] - vpn[starts] == 511) & (pfn[starts] & np.uint64(511) == 0)
                    & (pfn[starts + 511] - pfn[starts] == 511) & (pfn[starts] != 0)]
    if not len(starts):
        return thp
    # vpn is unique and sorted, so vpn[s+511]-vpn[s] == 511 means all 512 are present; the
    # frames must step by exactly one page too.
    step = np.concatenate([[0], (np.diff(pfn.astype(np.int64)) == 1).astype(np.int64)])
    run = np.cumsum(step)
    starts = starts[run[starts + 511] - run[starts] == 511]
    try:
        fd = os.open("/proc/kpageflags", os.O_RDONLY)
    except OSError:
        return thp  # no kpageflags: leave thp unknown (False)
    try:
        for s in starts.tolist():  # one read per 2 MiB candidate, not per page
            flags = int.from_bytes(os.pread(fd, 8, int(pfn[s]) * 8), "little")
            if flags >> _KPF_THP & 1:
                thp[s:s + 512] = True
    finally:
        os.close(fd)
    return thp
