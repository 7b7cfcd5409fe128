"""The read-only BPF scan of a process's page tables, and its decode to per-page arrays.

A task_vma iterator (bpf/ptwalk.bpf.c) copies the target's page tables as per-table bitmaps
(present, Accessed, written) and, where PFNs are needed, the raw PTEs; ``PageTableScan``
loads it, sizes its buffers and decodes the result into ``Pages`` and ``Vmas``. It neither
ages nor writes clear_refs and needs no CAP_SYS_ADMIN: the ptwalk source (``ptwalk``) adds
the aging by clear_refs, the mglru sources (``mglru``) take their resident set from it.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import logging
import mmap
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pageheat.kernel import procfs, vmlinux
from pageheat.kernel.libbpf import BpfObject, BtfMismatch, LibbpfError, Link
from pageheat.kernel.numa import NodeMap
from pageheat.sources.base import (
    UNMONITORED_REASONS,
    PageChunk,
    Pages,
    PageSet,
    PageType,
    SourceError,
    TargetGone,
    Truncations,
    Unmonitored,
    VmaKind,
    Vmas,
)
from pageheat.sources.objects import object_path

log = logging.getLogger("pageheat")

# The Python half of bpf/ptwalk.h: each struct once, as a numpy dtype, and each enum once;
# checked field by field and value by value against the object's BTF at every load (BTF_TYPES).
_STATE = np.dtype([
    ("direct_map_base", "<u8"), ("target_tgid", "<u4"), ("pgtable_levels", "<u4"),
    ("probe_vaddr", "<u8"), ("probe_pfn", "<u8"), ("probe_pattern", "<u8"), ("probe_tries", "<u8"),
    ("vmemmap_base", "<u8"), ("vmemmap_lo", "<u8"), ("vmemmap_steps", "<u8"),
    ("huge_zero_pfn", "<u8"), ("huge_probe_vaddr", "<u8"),
    ("n_vmas", "<u8"), ("n_tables", "<u8"), ("dropped_vmas", "<u8"), ("dropped_tables", "<u8"),
    ("read_errors", "<u8"), ("skipped_huge_pud", "<u8"), ("dup_vmas", "<u8"),
    ("young_flag_hits", "<u8"), ("young_flag_shared", "<u8"), ("special_ptes", "<u8"),
    ("special_pmds", "<u8"), ("step_limit_vmas", "<u8"), ("anon_cow_checks", "<u8"),
    ("last_mm", "<u8"), ("last_vm_end", "<u8"),
])
_VMA = np.dtype([("start", "<u8"), ("end", "<u8"), ("kind", "<u4"), ("flags", "<u4"),
                 ("unmonitored", "<u8"), ("ident", "<u8")])
_TABLE = np.dtype([
    ("addr", "<u8"), ("pmd", "<u8"), ("vma", "<u4"), ("flags", "<u4"),
    ("present", "<u8", 8), ("accessed", "<u8", 8), ("written", "<u8", 8),
])
# The _STATE fields the walk counts into, read after each scan: the truncations become
# ScanReport.truncations, the rest its free-form counters.
_REPORTED = ("n_vmas", "n_tables", "dropped_vmas", "dropped_tables", "read_errors",
             "skipped_huge_pud", "dup_vmas", "young_flag_hits", "young_flag_shared", "special_ptes",
             "special_pmds", "step_limit_vmas", "anon_cow_checks")
# Reset before each scan: the counts and the walk's resume point (the rest is set at load).
_PER_SCAN = (*_REPORTED, "last_mm", "last_vm_end")


class VmaFlag(enum.IntFlag):
    """enum vma_flag: bits of vma_rec.flags."""

    SHARED = 1 << 0
    SKIPPED = 1 << 1
    HUGETLB = 1 << 2
    PFNMAP = 1 << 3
    VDSO = 1 << 4
    NOACCESS = 1 << 5
    ANON_VMA = 1 << 6  # has an anon_vma: may hold anonymous pages


class TableFlag(enum.IntFlag):
    """enum table_flag: bits of table_rec.flags."""

    HUGE = 1 << 0


class FindBase(enum.IntEnum):
    """enum find_base_result: what find_base returns."""

    OK = 0
    NO_STATE = 1
    NOT_FOUND = 2


# C name -> Python description, for Btf.check (tests/test_unit_btf.py checks them too).
BTF_TYPES = ({"ptwalk_state": _STATE, "vma_rec": _VMA, "table_rec": _TABLE},
             {"vma_kind": (VmaKind, "VMA_"), "vma_flag": (VmaFlag, "VMA_F_"),
              "table_flag": (TableFlag, "TABLE_F_"), "find_base_result": (FindBase, "FIND_BASE_")})
# x86-64 4-level layout: KASLR places the struct page array in 1 GiB steps below this.
_VMEMMAP_LIMIT_4LEVEL = 0xFFFFFE0000000000
_HUGE = 2 << 20
# Unmonitored-page reason -> the vma_rec.flags bit that says a VMA is only counted for it
# (see bpf/ptwalk.h); VmaFlag names each reason's bit after it.
_UNMONITORED_FLAG = {reason: VmaFlag[reason.upper()] for reason in UNMONITORED_REASONS}
_PHYS_MASK = np.uint64(0x000FFFFFFFFFF000)
_PAGE_SHIFT = np.uint64(12)
_COLUMNS = np.arange(512, dtype=np.uint64)
_WORDS = np.arange(8, dtype=np.uint64)  # a table's bitmap words
_LAYOUT = ["start", "end", "ident"]  # a VMA with these unchanged keeps its name in maps
# The page type each VMA kind implies; private file/shmem pages that were written are anon COW copies.
_KIND_TYPE = np.array([PageType.ANON, PageType.FILE, PageType.SHMEM, PageType.ANON,
                       PageType.ANON, PageType.ANON], dtype=np.uint8)


@dataclass(frozen=True)
class ScanReport:
    """What a scan says besides its pages and mappings, for the source's Harvest: its
    truncations (step_limit, read_error), the mapped pages it could only count
    (Harvest.unmonitored), and free-form debug counters by _STATE field name (n_vmas,
    n_tables, dropped_vmas, dropped_tables, skipped_huge_pud, dup_vmas, young_flag_hits,
    young_flag_shared, special_ptes, special_pmds; the mglru sources add theirs)."""

    truncations: Truncations
    unmonitored: Unmonitored
    counters: dict[str, int]
    address_space: int | None = None  # Harvest.address_space


@dataclass
class _Capacity:
    vmas: int = 1024
    tables: int = 4096

    def covers(self, vmas: int, tables: int) -> bool:
        return vmas <= self.vmas and tables <= self.tables


@dataclass
class _Target:
    link: Link | None  # None: the process went while the object was reloaded
    need: _Capacity = field(default_factory=_Capacity)  # what its walk needs, for shrinking
    clear_refs: procfs.ClearRefs | None = None  # through a live thread (ptwalk.PtwalkSource only)
    layout: np.ndarray | None = None  # the scanned VMAs (_LAYOUT fields) that names belong to
    names: list[str] | None = None


class PageTableScan:
    """The target's resident pages from a read-only BPF walk of its page tables: present,
    Accessed bit (or PG_young, see check_young), THP, type, NUMA node (from the PFN). No
    aging and no clear_refs: whoever clears the Accessed bits decides what they mean.
    Zero pages and other special PTEs are left out by the walk; hugetlb, PFN maps and the
    vDSO are only counted (``ScanReport.unmonitored``). Raises SourceError when the program
    cannot load (capabilities, kernel), TargetGone when a process exits."""

    def __init__(self, obj: Path | None = None, nodes: NodeMap | None = None,
                 check_young: bool | None = None, pfns: bool = False,
                 bpf_dir: Path | None = None) -> None:
        self._path = obj or object_path("ptwalk", bpf_dir)
        self._nodes = nodes or NodeMap.from_sysfs()
        # PG_young costs a struct page read per idle page, so by default only when DAMON, the
        # usual other Accessed-bit consumer, is running. Where the kernel allows it the read
        # is a plain load, ~10 ns per idle page here against ~38 by bpf_probe_read_kernel
        # (docs/BENCHMARKS.md).
        self._check_young = procfs.damon_running() if check_young is None else check_young
        self._direct_page_read = self._check_young and direct_page_read()
        # PFNs are needed to tell nodes apart, and (``pfns``) to count a page shared by several
        # processes of a cgroup once (exporter/model/fleet.py); otherwise the raw PTE copy is skipped.
        self._copy_raw = pfns or self._nodes.single is None
        self._cap = _Capacity()
        self._buffers = _Buffers()
        self._scans = 0  # iterator runs so far: TablePages of a harvest are valid until the next
        self._targets: dict[int, _Target] = {}
        self._obj: BpfObject | None = None
        self._maps: list[mmap.mmap] = []
        self._load()

    # -- loading -----------------------------------------------------------------------------
    def _load(self) -> None:
        n_raw = self._cap.tables if self._copy_raw else 1
        max_entries = {"vmas": self._cap.vmas, "tables": self._cap.tables, "raw": n_raw}
        # Fixed for the life of the loaded object (a capacity change reloads it).
        rodata = {"max_vmas": self._cap.vmas, "max_tables": self._cap.tables, "max_raw": n_raw,
                  "copy_raw": int(self._copy_raw), "check_young": int(self._check_young),
                  "direct_page_read": int(self._direct_page_read),
                  "probe_max_gib": (self._nodes.max_pfn << 12 >> 30) + 2}
        try:
            obj = BpfObject(self._path, max_entries=max_entries, rodata=rodata)
        except LibbpfError as e:
            raise SourceError(f"ptwalk: cannot load {self._path.name}: {e.strerror}"
                              f"{_hint(e.errno)}") from e
        try:
            obj.btf.check(*BTF_TYPES)
        except BtfMismatch as e:
            obj.close()
            raise SourceError(f"ptwalk: {e}; rebuild the BPF objects (bpf/build.sh)") from None
        self._obj = obj
        self._maps = [obj.mmap_array(n) for n in ("state", "vmas", "tables", "raw")]
        self._state = np.frombuffer(self._maps[0], dtype=_STATE, count=1)[0:1]
        self._vmas = np.frombuffer(self._maps[1], dtype=_VMA, count=self._cap.vmas)
        self._tables = np.frombuffer(self._maps[2], dtype=_TABLE, count=self._cap.tables)
        self._raw = np.frombuffer(self._maps[3], dtype="<u8", count=512 * obj.max_entries("raw")
                                  ).reshape(-1, 512)
        try:
            self._find_direct_map()
        except SourceError as e:
            failed = str(e)  # not the exception: its traceback's frames hold views of the maps
        except LibbpfError as e:
            failed = f"ptwalk: cannot run find_base: {e.strerror}{_hint(e.errno)}"
        except BaseException:
            self._unload()
            raise
        else:
            return
        self._unload()
        raise SourceError(failed)

    def _find_direct_map(self) -> None:
        """Run find_base (see ptwalk.bpf.c) with a pattern planted in a page of our own, and a
        THP-eligible page that is only read (the huge zero page, where THP maps it)."""
        page = mmap.mmap(-1, mmap.PAGESIZE)
        # Private: shared anonymous memory is shmem, which never maps the huge zero page.
        huge = mmap.mmap(-1, 2 * _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        anchors: list[ctypes.c_char] = []
        try:
            pattern = int.from_bytes(secrets.token_bytes(8), "little") | 1
            page[0:8] = pattern.to_bytes(8, "little")
            anchors.append(ctypes.c_char.from_buffer(page))
            vaddr = ctypes.addressof(anchors[0])
            anchors.append(ctypes.c_char.from_buffer(huge))
            off = -ctypes.addressof(anchors[1]) % _HUGE
            huge_vaddr = 0
            if hasattr(mmap, "MADV_HUGEPAGE"):
                try:
                    huge.madvise(mmap.MADV_HUGEPAGE, off, _HUGE)
                    huge_vaddr = ctypes.addressof(anchors[1]) + off
                    _ = huge[off]  # a read fault: the huge zero page, if THP uses it
                except OSError:
                    huge_vaddr = 0  # THP not built in: no huge zero page either
            st = self._state
            st["probe_vaddr"], st["probe_pattern"] = vaddr, pattern
            st["huge_probe_vaddr"] = huge_vaddr
            # The struct page array lies above the direct map (4-level only; 5-level layouts
            # are not searched, and PG_young is then not consulted).
            st["vmemmap_lo"] = 0
            st["vmemmap_steps"] = 0
            rc = self._obj.test_run("find_base")  # type: ignore[union-attr]
            if rc == FindBase.OK and int(st["pgtable_levels"][0]) == 4:
                lo = int(st["direct_map_base"][0]) + ((self._nodes.max_pfn << 12) + (1 << 30))
                st["vmemmap_lo"] = lo & ~((1 << 30) - 1)
                st["vmemmap_steps"] = (_VMEMMAP_LIMIT_4LEVEL - int(st["vmemmap_lo"][0])) >> 30
                rc = self._obj.test_run("find_base")  # type: ignore[union-attr]
            st["probe_pattern"] = 0
            del st
        finally:
            anchors.clear()  # an mmap cannot close while a ctypes view exports it
            page.close()
            huge.close()
        if rc == FindBase.NOT_FOUND:
            raise SourceError("ptwalk: kernel direct map not found through our own page tables "
                              "(is this x86-64 with 4- or 5-level paging?)")
        if rc != FindBase.OK:
            what = FindBase(rc).name if rc in list(FindBase) else str(rc)
            raise SourceError(f"ptwalk: find_base failed ({what})")

    @property
    def young_flag_direct(self) -> bool:
        """PG_young is read by plain loads (bpf_rdonly_cast), not a helper call per page."""
        return self._direct_page_read

    @property
    def young_flag_usable(self) -> bool:
        """PG_young is consulted: the struct page array was found."""
        return self._check_young and bool(self._state["vmemmap_base"][0])

    def _reload(self, cap: _Capacity) -> None:
        pids = list(self._targets)
        for t in self._targets.values():
            if t.link is not None:
                t.link.destroy()
                t.link = None
        self._unload()
        self._cap = cap
        self._load()
        for pid in pids:
            try:
                self._targets[pid].link = self._obj.attach_task_iter("scan", pid)  # type: ignore
            except LibbpfError as e:
                if e.errno not in (3, 2):  # ESRCH, ENOENT: it exited; its next scan says so
                    raise
                self._targets[pid].link = None

    def _unload(self) -> None:
        self._state = self._vmas = self._tables = self._raw = None  # type: ignore[assignment]
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass  # a view still lives (a caller's traceback): unmapped when it dies

        self._maps = []
        if self._obj:
            self._obj.close()
            self._obj = None

    # -- scanning ------------------------------------------------------------------------------
    def attach(self, pid: int) -> None:
        """Size the buffers for ``pid`` and create its iterator link. Raises TargetGone."""
        if pid in self._targets:
            return
        try:
            status = procfs.read_status_kib(pid, ("VmPTE", "AnonHugePages", "FilePmdMapped"))
            n_maps = procfs.count_maps(pid)
        except (FileNotFoundError, ProcessLookupError) as e:
            raise TargetGone(pid) from e
        # Size the buffers from what the kernel says the page tables take, before the first
        # scan: a table record per PTE page or huge PMD, and one per mapping for the tables
        # that several small mappings share. A mapping that straddles a 2 MiB boundary adds
        # one more; where that overflows, the first scan grows them exactly (see _scan). Each
        # record is 216 bytes of mapped BPF array: 2 per mapping made a 60,000-mapping
        # process cost 32 MiB.
        need = _Capacity(vmas=n_maps + 64, tables=status["VmPTE"] // 4 + n_maps + 64
                         + (status["AnonHugePages"] + status["FilePmdMapped"]) // 2048)
        if not self._cap.covers(need.vmas, need.tables):
            self._reload(_grow(self._cap, need))
        try:
            link = self._obj.attach_task_iter("scan", pid)  # type: ignore[union-attr]
        except LibbpfError as e:
            if e.errno in (3, 2):  # ESRCH, ENOENT
                raise TargetGone(pid) from e
            raise
        self._targets[pid] = _Target(link, need)

    def harvest(self, pid: int, lazy: bool = False) -> tuple[PageSet, Vmas, ScanReport]:
        """One scan of an attached ``pid``, decoded: its pages, its mappings, the scan's
        report (truncations, unmonitored pages, counters). The Pages arrays may reuse the
        memory of an earlier harvest's that nobody holds any more (see _Buffers). ``lazy``:
        the pages as TablePages (decoded when read) where no frame numbers are read; they read
        the BPF map in place, so they must be read before this source scans again (as serve
        and snapshot do: harvest, then aggregate): reading them later raises SourceError."""
        vmas, tables, raw, counters = self._scan(pid)
        if len(vmas) == 0:
            del tables, raw  # views of the BPF maps: not to be kept by the traceback
            raise TargetGone(pid)  # exited (a zombie has no mm left to walk)
        scan = self._scans
        lazy_pages = TablePages.if_smaller(vmas, tables, self._nodes, lambda: self._scans == scan) \
            if lazy and not len(raw) and self._nodes.single is not None else None
        pages: PageSet = lazy_pages if lazy_pages is not None else \
            _pages(vmas, tables, raw, self._nodes, self._buffers)
        # Views of the BPF maps (see _scan): only lazy pages keep one, until the next scan.
        del tables, raw
        names = self._names(pid, vmas)
        truncations = Truncations(step_limit=counters.pop("step_limit_vmas"),
                                  read_error=counters.pop("read_errors"))
        # The mm_struct the walk visited (the scan's last_mm): valid until the next scan.
        report = ScanReport(truncations, unmonitored_pages(vmas), counters,
                            address_space=int(self._state["last_mm"][0]) or None)
        return pages, _vma_table(vmas, names), report

    def detach(self, pid: int) -> None:
        if self._release(pid):
            self._shrink()

    def _release(self, pid: int) -> bool:
        """Drop ``pid``'s link and clear_refs; False when it was not attached."""
        t = self._targets.pop(pid, None)
        if t is None:
            return False
        if t.link is not None:
            t.link.destroy()
        if t.clear_refs is not None:
            t.clear_refs.close()
        return True

    def _shrink(self) -> None:
        """Give back what a target that has gone needed: the BPF maps' sizes are fixed at
        load, so when the remaining targets need at most a quarter of the capacity, reload
        smaller (one load, ~tens of ms: only after a target 4x larger than any left); and
        drop the reused output arrays (_Buffers), sized for the largest harvest so far.
        Never raises (detach must not): a failed reload is logged and the old size kept."""
        need = _Capacity(max((t.need.vmas for t in self._targets.values()), default=0),
                         max((t.need.tables for t in self._targets.values()), default=0))
        smaller = _grow(_Capacity(), need)  # the initial capacity at least, with headroom
        if self._obj is None or (4 * smaller.vmas > self._cap.vmas
                                 and 4 * smaller.tables > self._cap.tables):
            return
        old = self._cap
        self._buffers = _Buffers()
        try:
            self._reload(smaller)
        except (LibbpfError, SourceError) as e:
            log.warning("ptwalk: could not shrink the scan's buffers (%s); keeping them", e)
            try:
                self._reload(old)
            except (LibbpfError, SourceError) as e2:
                log.error("ptwalk: could not reload the scan (%s); its targets fail until re-attached", e2)

    def close(self) -> None:
        for pid in list(self._targets):
            self._release(pid)  # no shrinking: everything is unloaded next
        self._unload()

    # -- internals -----------------------------------------------------------------------------
    def _names(self, pid: int, vmas: np.ndarray) -> list[str]:
        """The VMAs' names from /proc/PID/maps, read again only when the layout changed: a
        VMA added, removed, resized, or replaced in place (its file or anon name pointer).
        Parsing maps costs about 3 us per mapping, as much as decoding 500 pages. A file
        renamed or deleted while mapped keeps its old name until the layout changes."""
        t = self._targets[pid]
        layout = vmas[_LAYOUT]
        if t.names is not None and t.layout is not None and np.array_equal(t.layout, layout):
            return t.names
        try:
            maps = procfs.read_maps_table(pid)
        except (FileNotFoundError, ProcessLookupError) as e:
            raise TargetGone(pid) from e
        names, exact = _names(vmas, maps)
        t.layout, t.names = (layout.copy(), names) if exact else (None, None)
        return names

    def _mark_cow_anon(self, vmas: np.ndarray) -> None:
        """Mark as written the anonymous copy-on-write pages of private file/shmem mappings
        whose PTE is neither writable nor dirty (fork, mprotect, RELRO, KSM, a swap-in): the
        anon_pass program asks their struct page (PageAnon), what smaps counts as Anonymous.
        Needs the struct page array (4-level paging); without it RW or Dirty decide alone."""
        if not self._state["vmemmap_base"][0]:
            return
        # Only a VMA with an anon_vma can hold anonymous pages (anon_vma_prepare() on the
        # first copy-on-write fault, or anon_vma_fork()): libraries' text is left alone.
        cow = ((vmas["kind"] == VmaKind.FILE) | (vmas["kind"] == VmaKind.SHMEM)) & (
            (vmas["flags"] & (VmaFlag.SHARED | VmaFlag.ANON_VMA)) == VmaFlag.ANON_VMA)
        if cow.any():
            self._obj.test_run("anon_pass")  # type: ignore[union-attr]

    def _scan(self, pid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
        """Run the iterator; grow the buffers and scan again if anything did not fit. The
        tables and raw arrays returned are views of the BPF maps, valid until the next scan.
        Only TablePages keep one, checked against the scan count; a reload with a view alive
        leaves the old mapping to be unmapped when the view dies (see _unload)."""
        for _ in range(4):
            self._scans += 1
            st = self._state
            st["target_tgid"] = pid
            for k in _PER_SCAN:
                st[k] = 0
            link = self._targets[pid].link
            if link is None:  # went while the object was reloaded
                raise TargetGone(pid)
            fd = link.create_iter()
            try:
                while os.read(fd, 4096):
                    pass
            except ProcessLookupError as e:
                raise TargetGone(pid) from e
            finally:
                os.close(fd)
            if not st["dropped_vmas"][0] and not st["dropped_tables"][0]:
                n_v, n_t = int(st["n_vmas"][0]), int(st["n_tables"][0])
                self._mark_cow_anon(self._vmas[:n_v])
                counters = {k: int(st[k][0]) for k in _REPORTED}  # the pass's count included
                raw = self._raw[:n_t] if self._copy_raw else self._raw[:0]
                # The VMAs are copied (Vmas keeps views of them; the next scan of any target
                # reuses the buffers). The tables and raw PTEs are views, decoded by harvest()
                # before anything scans again: copying them cost 216 bytes per table (4 KiB
                # more with raw PTEs), the peak of a sparse layout.
                return self._vmas[:n_v].copy(), self._tables[:n_t], raw, counters
            need = _Capacity(self._cap.vmas + int(st["dropped_vmas"][0]),
                             self._cap.tables + int(st["dropped_tables"][0]))
            del st  # no view of the old maps may survive their unmapping
            self._targets[pid].need = need
            self._reload(_grow(self._cap, need))
        raise SourceError(f"ptwalk: layout of {pid} kept outgrowing the buffers")


def unmonitored_pages(vmas: np.ndarray) -> Unmonitored:
    """Mapped 4 KiB pages in the scanned VMAs (_VMA records) that are counted but not walked
    for Accessed bits (hugetlb, PFN maps, the vDSO), by reason."""
    return Unmonitored(**{reason: int(vmas["unmonitored"][(vmas["flags"] & bit) != 0].sum())
                          for reason, bit in _UNMONITORED_FLAG.items()})


def _grow(cap: _Capacity, need: _Capacity) -> _Capacity:
    """At least what is needed, with room for growth, never smaller than before."""
    return _Capacity(max(cap.vmas, need.vmas + need.vmas // 4),
                     max(cap.tables, need.tables + need.tables // 4))


def direct_page_read() -> bool:
    """The kernel has bpf_rdonly_cast (6.2+), so ptwalk can read struct page by plain loads
    (young_candidates in bpf/ptwalk.bpf.c)."""
    return bool(vmlinux.kernel_functions(["bpf_rdonly_cast"]))


def _hint(errno: int | None) -> str:
    if errno == 1:
        return " (needs CAP_BPF and CAP_PERFMON, or root)"
    return ""


def _decode(vmas: np.ndarray, tables: np.ndarray, raw: np.ndarray,
            maps: procfs.MapsTable, nodes: NodeMap) -> tuple[Pages, Vmas]:
    """Per-table bitmaps -> per-page arrays, and the mappings named from ``maps``."""
    return _pages(vmas, tables, raw, nodes), _vma_table(vmas, _names(vmas, maps)[0])


def _names(vmas: np.ndarray, maps: procfs.MapsTable) -> tuple[list[str], bool]:
    """Each scanned VMA's name in /proc/PID/maps ("" where maps has no such VMA), and whether
    every VMA was found with the same bounds: maps is read after the scan, and a layout that
    changed in between must not be remembered. Both lists are in address order."""
    start = vmas["start"]
    if not len(maps):
        return [""] * len(start), not len(start)
    at = np.minimum(np.searchsorted(maps.start, start), len(maps) - 1)
    found = maps.start[at] == start
    exact = bool(found.all() and np.array_equal(maps.end[at], vmas["end"]))
    names = maps.names
    return [names[i] if f else "" for i, f in zip(at.tolist(), found.tolist(), strict=True)], exact


def _vma_table(vmas: np.ndarray, names: list[str]) -> Vmas:
    accessible = (vmas["flags"] & VmaFlag.NOACCESS) == 0
    return Vmas(vmas["start"], vmas["end"], vmas["kind"].astype(np.uint8), accessible, names)


def _unpack(words: np.ndarray) -> np.ndarray:
    """uint64 bitmap words, any shape -> (words.size * 64,) bool, bit b of word w at
    w * 64 + b. A table's 8 words are its 512 pages in order, so for (n, 8) tables bit i of
    table t lands at t * 512 + i."""
    b = np.ascontiguousarray(words).view(np.uint8).reshape(-1, 8)
    return np.unpackbits(b, axis=1, bitorder="little").reshape(-1).view(bool)


class TablePages:
    """A harvest's pages as the scan's per-table bitmaps (base.PageSet): what the daemon's
    aggregator reads a chunk at a time, so that no per-page array of the whole target is
    ever held (base.Pages costs 17 bytes per page; the tables, 216 bytes per 512 pages).
    Reading a field (``vpn``, ``accessed``, ...) decodes the whole target once and keeps it,
    for callers that want every page (top, tests). Single-node, without frame numbers only
    (``pfn`` is None): where PFNs are read the raw PTEs cost more than the arrays saved.

    vmas: a copy of the scan's _VMA records; tables: its _TABLE records, read in place (a view
    of the BPF map: copying it cost 216 bytes per 512 pages, 1.7 MiB at 16 GiB); ``valid``: whether
    they still hold this harvest's bits (the source has not scanned since), checked at every
    read of them so that a late reader gets SourceError, not another scan's pages. nodes.single
    is set.
    """

    def __init__(self, vmas: np.ndarray, tables: np.ndarray, nodes: NodeMap,
                 per_table: np.ndarray | None = None, valid: Callable[[], bool] = lambda: True) -> None:
        assert nodes.single is not None
        self._vmas, self._table_records, self._nodes, self._valid = vmas, tables, nodes, valid
        self._per_table = _present_per_table(tables) if per_table is None else per_table
        self._total = int(self._per_table.sum())
        self._whole: Pages | None = None
        self._attrs: _TableAttrs | None = None
        self.pfn = None

    @classmethod
    def if_smaller(cls, vmas: np.ndarray, tables: np.ndarray, nodes: NodeMap,
                   valid: Callable[[], bool] = lambda: True) -> TablePages | None:
        """TablePages of ``tables`` where the records take less memory than Pages would: dense
        memory, not a layout of many small mappings (a 216-byte record each for a page or two).
        None otherwise."""
        per_table = _present_per_table(tables)
        if _TABLE.itemsize * len(tables) >= _PAGES_BYTES * int(per_table.sum()):
            return None
        return cls(vmas, tables, nodes, per_table, valid)

    def __len__(self) -> int:
        return self._total

    @property
    def _tables(self) -> np.ndarray:
        if not self._valid():
            raise SourceError("ptwalk: a harvest's pages were read after the source scanned again")
        return self._table_records

    def _table_attrs(self) -> _TableAttrs:
        if self._attrs is None:
            self._attrs = _TableAttrs.of(self._vmas, self._tables, self._per_table)
        return self._attrs

    def _decode(self, tables: np.ndarray, attrs: _TableAttrs | None = None) -> Pages:
        return _pages(self._vmas, tables, _NO_RAW, self._nodes, attrs=attrs)

    def _all(self) -> Pages:
        if self._whole is None:
            self._whole = self._decode(self._tables)
        return self._whole

    vpn = property(lambda self: self._all().vpn)
    accessed = property(lambda self: self._all().accessed)
    node = property(lambda self: self._all().node)
    type = property(lambda self: self._all().type)
    thp = property(lambda self: self._all().thp)
    vma = property(lambda self: self._all().vma)

    def chunks(self, n: int) -> Iterator[PageChunk]:
        """Runs of whole tables, each at most ``n`` pages (``n`` >= 512), decoded one at a
        time. A run of at least FULL_RUN_MIN full tables comes in chunks of its own, each
        decoded field by field as it is read (_FullTables): a mapping whose first or last
        table is partial (not 2 MiB aligned) does not make its neighbour chunk decode
        whole, and a layout of short runs is not cut into tiny chunks."""
        if self._whole is not None:
            yield from self._whole.chunks(n)
            return
        tables = self._tables
        ends = np.cumsum(self._per_table)
        attrs = self._table_attrs()  # once, not per chunk
        node = int(self._nodes.single)  # type: ignore[arg-type]
        run_lo, run_hi = _long_runs(self._per_table == 512, FULL_RUN_MIN)
        lo, r = 0, 0
        while lo < len(tables):
            while r < len(run_lo) and run_hi[r] <= lo:
                r += 1
            part: PageChunk
            if r < len(run_lo) and run_lo[r] <= lo:  # inside a long run of full tables
                hi = min(lo + max(n // 512, 1), int(run_hi[r]))
                part = _FullTables(self, slice(lo, hi), attrs[lo:hi], node)
            else:  # up to the next long run
                limit = int(run_lo[r]) if r < len(run_lo) else len(tables)
                hi = int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + n, side="right"))
                hi = min(max(hi, lo + 1), limit)
                part = self._decode(tables[lo:hi], attrs[lo:hi])
            if len(part):
                yield part
            lo = hi

    def blocks(self, shift: int, chunk: int = 0) -> np.ndarray:
        """One block per 64-page bitmap word with a present page (shift 6: BLOCK_SHIFT);
        no per-page transients, so no ``chunk``."""
        assert shift == 6  # a bitmap word is 64 pages, 64-page aligned (tables are 2 MiB)
        tables = self._tables
        # Every word's block, [tables, 8] (8 bytes per 64 pages), then only the present ones:
        # no per-word index arrays (np.nonzero's were 2 MiB of transients at 16 GiB).
        blk = ((tables["addr"] >> np.uint64(_PAGE_SHIFT + 6))[:, None] + _WORDS).reshape(-1)
        live = (tables["present"] != 0).reshape(-1)
        if not live.all():
            blk = blk[live]
        # Two VMAs sharing a 2 MiB region have a table each: a word can be theirs both.
        if len(blk) > 1:
            first = blk[1:] != blk[:-1]
            if not first.all():
                blk = blk[np.concatenate(([True], first))]
        return blk

    def count_outside(self, lo: int, hi: int) -> int:
        """Tables wholly outside [lo, hi) count whole; in the few that straddle it, the present
        bits outside are counted (a [tables, 512] mask: decoding them cost ~0.2 ms a harvest)."""
        first = self._tables["addr"] >> _PAGE_SHIFT
        inside = (first >= np.uint64(lo)) & (first + np.uint64(512) <= np.uint64(hi))
        apart = (first + np.uint64(512) <= np.uint64(lo)) | (first >= np.uint64(hi))
        straddle = ~inside & ~apart & (self._per_table > 0)
        n = int(self._per_table[apart].sum())
        if straddle.any():
            t = self._tables[straddle]
            vpn = (t["addr"] >> _PAGE_SHIFT).astype(np.int64)[:, None] + np.arange(512)
            present = _unpack(t["present"]).reshape(len(t), 512)
            n += int(np.count_nonzero(present & ((vpn < lo) | (vpn >= hi))))
        return n

    def count_accessed(self) -> int:
        return int(np.bitwise_count(self._tables["accessed"] & self._tables["present"]).sum())

    def per_vma(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-mapping counts from each table's popcounts: nothing decoded (a table is one
        VMA's, see _pages)."""
        vma = self._tables["vma"].astype(np.intp)
        accessed = np.bitwise_count(self._tables["accessed"] & self._tables["present"]).sum(
            axis=1, dtype=np.int64)
        # float64 weights: exact for counts below 2**53.
        return (np.bincount(vma, weights=self._per_table, minlength=n).astype(np.int64),
                np.bincount(vma, weights=accessed, minlength=n).astype(np.int64))

    def node_type_range(self) -> tuple[int, int, int, int]:
        """The node is the single one; the types come from the tables' VMA kinds, and anon
        too where a private file/shmem table has written pages (copy-on-write copies)."""
        attrs = self._table_attrs()
        live = attrs.per_table > 0
        types = attrs.ptype[live]
        if attrs.cow[live].any():
            types = np.append(types, np.uint8(PageType.ANON))
        node = int(self._nodes.single)  # type: ignore[arg-type]
        return node, node, int(types.min()), int(types.max())


_NO_RAW = np.zeros((0, 512), dtype="<u8")
# Full tables in a row that TablePages.chunks hands out as runs of their own (_FullTables):
# 8 tables, 4,096 pages; shorter runs stay in the chunks decoded whole around them.
FULL_RUN_MIN = 8
_PAGES_BYTES = 17  # per page in base.Pages without pfn: vpn 8, vma 4, node 2, accessed, type, thp


def _long_runs(flag: np.ndarray, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) indices of the runs of True in ``flag`` (bool) at least ``min_len`` long,
    in order: two intp arrays."""
    edge = np.flatnonzero(np.diff(np.concatenate(([0], flag.view(np.int8), [0]))))
    lo, hi = edge[0::2], edge[1::2]
    long = hi - lo >= min_len
    return lo[long], hi[long]


def _present_per_table(tables: np.ndarray) -> np.ndarray:
    """int64 present pages of each _TABLE record."""
    return np.bitwise_count(tables["present"]).sum(axis=1, dtype=np.int64)


class _Buffers:
    """Output arrays reused from one harvest to the next. A fresh multi-MiB array costs a page
    fault per 4 KiB on first touch, as much as the decode itself; so an array is reused, but
    only when nothing outside this cache holds it or a view of it (its reference count: a
    view keeps its base alive), i.e. when the previous harvest's Pages were dropped. Callers
    that keep their Pages (snapshot keeps every scan) get fresh arrays: never a shared one."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int, dtype: type) -> np.ndarray:
        a = self._arrays.get(name)
        # References: the dict, the local name, getrefcount's argument; more means a view lives.
        if a is None or len(a) < n or a.dtype != dtype or sys.getrefcount(a) > 3:
            a = self._arrays[name] = np.empty(n + n // 8, dtype=dtype)
        return a[:n]


@dataclass(frozen=True)
class _TableAttrs:
    """What each _TABLE record says of all its pages, one value per record."""

    per_table: np.ndarray  # int64: present pages
    huge: np.ndarray  # bool: a PMD-mapped THP
    vma: np.ndarray  # int32: the VMA's index
    ptype: np.ndarray  # uint8: PageType of its pages, before copy-on-write copies
    cow: np.ndarray  # bool: private file/shmem with written pages (copy-on-write candidates)

    @classmethod
    def of(cls, vmas: np.ndarray, tables: np.ndarray,
           per_table: np.ndarray | None = None) -> _TableAttrs:
        """``per_table``: the present counts, where the caller has them already."""
        vma_t = tables["vma"].astype(np.int32)
        kind_t = vmas["kind"].astype(np.uint8)[vma_t]
        # In private file/shmem mappings, written pages are anonymous copy-on-write copies:
        # only those tables' written bits are looked at, and only those tables are unpacked.
        cow_t = ((vmas["flags"][vma_t] & VmaFlag.SHARED) == 0) & (
            (kind_t == VmaKind.FILE) | (kind_t == VmaKind.SHMEM))
        if per_table is None:
            per_table = _present_per_table(tables)
        return cls(per_table, (tables["flags"] & TableFlag.HUGE) != 0, vma_t,
                   _KIND_TYPE[kind_t], cow_t & tables["written"].any(axis=1))

    def __getitem__(self, s: slice) -> _TableAttrs:
        return _TableAttrs(self.per_table[s], self.huge[s], self.vma[s], self.ptype[s], self.cow[s])


def _page_types(tables: np.ndarray, attrs: _TableAttrs) -> np.ndarray:
    """uint8 PageType of each present page of ``tables`` (_TABLE records): its mapping's,
    anon for the written pages of private file/shmem mappings (copy-on-write copies)."""
    per_table = attrs.per_table
    ptype = np.repeat(attrs.ptype, per_table)
    cow = np.flatnonzero(attrs.cow)
    if len(cow):
        written = _unpack(tables["written"][cow])[_unpack(tables["present"][cow])]
        count = per_table[cow]
        first = np.cumsum(per_table)[cow] - count  # each table's first page in the arrays
        page = np.repeat(first - (np.cumsum(count) - count), count) + np.arange(int(count.sum()))
        ptype[page[written]] = PageType.ANON
    return ptype


class _FullTables:
    """The pages of a run of full tables (all 512 pages present: dense memory) as
    TablePages.chunks hands them out: base.PageChunk, each field decoded on first use, as
    ``_pages`` would. For a contiguous chunk of one (node, type), the aggregator reads
    ``span``, ``node_type_range``, ``accessed`` and ``vma``, not ``vpn``: its 8 bytes per page
    were half of the decode's CPU (2026-12-01, 16,384 pages: 27 of 50 us). Chunks of several
    types, or not contiguous (a gap between two mappings), read ``vpn`` and ``type`` too."""

    pfn = None

    def __init__(self, pages: TablePages, tables: slice, attrs: _TableAttrs, node: int) -> None:
        self._pages, self._slice, self._attrs, self._node = pages, tables, attrs, node

    @property
    def _tables(self) -> np.ndarray:  # through TablePages._tables: its check that they are valid
        return self._pages._tables[self._slice]

    def __len__(self) -> int:
        return len(self._attrs.per_table) * 512

    def span(self) -> tuple[int, int]:
        addr = self._tables["addr"]
        return int(addr[0] >> _PAGE_SHIFT), int(addr[-1] >> _PAGE_SHIFT) + 511

    def node_type_range(self) -> tuple[int, int, int, int]:
        """From the tables' mappings, nothing decoded; where copy-on-write copies may make
        some pages anon, from the decoded types (a chunk of all-written private file pages
        is all anon: one type, so the aggregator counts it as one)."""
        types = self.type if self._attrs.cow.any() else self._attrs.ptype
        return self._node, self._node, int(types.min()), int(types.max())

    @functools.cached_property
    def vpn(self) -> np.ndarray:
        return ((self._tables["addr"] >> _PAGE_SHIFT)[:, None] + _COLUMNS).reshape(-1)

    @functools.cached_property
    def accessed(self) -> np.ndarray:
        return _unpack(self._tables["accessed"])

    @functools.cached_property
    def node(self) -> np.ndarray:
        return np.full(len(self), self._node, dtype=np.int16)

    @functools.cached_property
    def type(self) -> np.ndarray:
        return _page_types(self._tables, self._attrs)

    @functools.cached_property
    def thp(self) -> np.ndarray:
        return np.repeat(self._attrs.huge, 512)

    @functools.cached_property
    def vma(self) -> np.ndarray:
        return np.repeat(self._attrs.vma, 512)


def _pages(vmas: np.ndarray, tables: np.ndarray, raw: np.ndarray, nodes: NodeMap,
           buffers: _Buffers | None = None, attrs: _TableAttrs | None = None) -> Pages:
    """Per-table bitmaps -> per-page arrays, all in numpy, no per-table Python.

    Where every table is full (the usual case for a dense heap) the padded (table, column)
    layout is the result and nothing is compressed; otherwise only the bitmap words with a
    present page are unpacked and compressed with the present mask, so that transients grow
    with the present words, not with 512 pages per table. Per-table attributes are repeated once per
    present page (1-byte repeats are memset-fast). VMAs arrive in address order and each
    table once per VMA, so vpn comes out sorted.
    """
    buf = buffers or _Buffers()
    n = len(tables)
    if attrs is None:  # TablePages passes its chunk's slice
        attrs = _TableAttrs.of(vmas, tables)
    per_table = attrs.per_table
    total = int(per_table.sum())
    if total == n * 512:
        live = present = None
    else:
        # Only the words with a present page are gathered and unpacked: a sparse layout
        # (60,000 small mappings, a table each) costs per present word, not per table.
        live = np.nonzero(tables["present"])  # (table, word) pairs, in address order
        present = _unpack(tables["present"][live])

    def per_page(bits: np.ndarray) -> np.ndarray:
        """A (n, 8) bitmap field -> one bool per present page."""
        return _unpack(bits) if live is None else _unpack(bits[live])[present]

    base = tables["addr"] >> _PAGE_SHIFT
    position = None  # each page's index in the (table, column) layout, where not all present
    if live is None:
        vpn = buf.get("vpn", total, np.uint64)
        np.add(base[:, None], _COLUMNS, out=vpn.reshape(n, 512))
    else:
        # Each live word's first page, repeated once per present page in it, plus the bit.
        per_word = np.bitwise_count(tables["present"][live]).astype(np.intp)
        bit = np.flatnonzero(present)
        bit &= 63
        bit = bit.view(np.uint64)
        first = base[live[0]] + (live[1].astype(np.uint64) << np.uint64(6))
        vpn = np.repeat(first, per_word)
        vpn += bit
        if len(raw):
            position = np.repeat(live[0] * 512 + live[1] * 64, per_word) + bit.astype(np.intp)
    accessed = per_page(tables["accessed"])
    huge = np.repeat(attrs.huge, per_table)
    vma = np.repeat(attrs.vma, per_table)
    ptype = _page_types(tables, attrs)

    # Frame numbers: the PMD's for a THP, else the PTE's (raw tables are copied only when NUMA
    # or the cgroup aggregates need them: ``copy_raw``).
    pfn = None
    if len(raw) or nodes.single is None:
        col = vpn & np.uint64(511)  # tables are 2 MiB aligned
        huge_pfn = np.repeat((tables["pmd"] & _PHYS_MASK) >> _PAGE_SHIFT, per_table) + col
        if len(raw):
            entries = raw.reshape(-1)
            pte_pfn = ((entries if position is None else entries[position]) & _PHYS_MASK) >> _PAGE_SHIFT
        else:
            pte_pfn = huge_pfn
        pfn = np.where(huge, huge_pfn, pte_pfn).astype(np.uint64)
    if nodes.single is not None:
        node = buf.get("node", total, np.int16)
        node.fill(nodes.single)
    else:
        node = nodes.node_of(pfn)
    return Pages(vpn, accessed, node, ptype, huge, vma, pfn if len(raw) else None)
