"""What every harvesting source yields, and the interface the daemon drives.

A source follows processes. ``attach(pid)`` starts following one and begins its first
interval; each ``cycle(pid)`` reports the pages that were accessed since the interval began
and begins the next one. How a source ages (clear_refs, an MGLRU aging request, the kernel's
own reclaim) is its own business: the aggregator sees only ``Harvest`` objects.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Protocol

import numpy as np


class PageType(enum.IntEnum):
    ANON = 0
    FILE = 1
    SHMEM = 2


PAGE_TYPE_NAMES = tuple(t.name.lower() for t in PageType)


class VmaKind(enum.IntEnum):
    """Same values as enum vma_kind in bpf/ptwalk.h."""

    ANON = 0
    FILE = 1
    SHMEM = 2
    HEAP = 3
    STACK = 4
    OTHER = 5


VMA_KIND_NAMES = tuple(k.name.lower() for k in VmaKind)


class SourceError(Exception):
    """The source cannot run here (kernel feature, capability); the message says why."""


class TargetGone(Exception):
    """The followed process exited. Normal: the daemon drops it quietly."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"process {pid} exited")
        self.pid = pid


@dataclass(frozen=True)
class Vmas:
    """The target's mappings at harvest time, sorted by start address.

    start, end: uint64 addresses; kind: uint8 VmaKind; accessible: bool, not PROT_NONE
    (reservations and guard areas, left out of address bins); names: one per mapping, from
    /proc/PID/maps (``[heap]``, a file path, ``""`` for anonymous memory).
    """

    start: np.ndarray
    end: np.ndarray
    kind: np.ndarray
    accessible: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.start)


@dataclass(frozen=True)
class Pages:
    """Resident pages, one element per 4 KiB page, sorted by vpn, no duplicates.

    vpn: uint64 virtual page number (address >> 12); accessed: bool, accessed during the
    interval that this harvest closes; node: int16 NUMA node; type: uint8 PageType;
    thp: bool, mapped by a PMD (the Accessed bit is per 2 MiB); vma: int32 index into Vmas.
    pfn: uint64 page frame number of each page, or None when the source did not read them
    (ptwalk reads them only when asked: they cost a copy of every page table).
    """

    vpn: np.ndarray
    accessed: np.ndarray
    node: np.ndarray
    type: np.ndarray
    thp: np.ndarray
    vma: np.ndarray
    pfn: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.vpn)

    def span(self) -> tuple[int, int]:
        """(first, last) vpn; not for no pages. The pages are one contiguous run exactly
        when last - first == len - 1 (vpn are sorted and distinct)."""
        return int(self.vpn[0]), int(self.vpn[-1])

    # What the aggregator asks of a harvest's pages as a whole (PageSet). A source may hand
    # out another PageSet that answers these without holding every page's arrays
    # (pagetable.TablePages); reading a field of that one decodes the whole target.
    def chunks(self, n: int) -> Iterator[Pages]:
        """Consecutive runs of at most ``n`` pages (views), in vpn order."""
        for lo in range(0, len(self), n):
            sl = slice(lo, lo + n)
            yield Pages(self.vpn[sl], self.accessed[sl], self.node[sl], self.type[sl],
                        self.thp[sl], self.vma[sl], None if self.pfn is None else self.pfn[sl])

    def blocks(self, shift: int, chunk: int = 1 << 16) -> np.ndarray:
        """The sorted distinct uint64 ``vpn >> shift`` of the pages, ``chunk`` pages at a time
        so that the transients stay small. (Not np.unique: numpy 2.3+ hashes, 1.7 s for 1 M
        sorted keys here.)"""
        parts = []
        for part in self.chunks(chunk):
            first, last = part.vpn[0] >> np.uint64(shift), part.vpn[-1] >> np.uint64(shift)
            if int(part.vpn[-1] - part.vpn[0]) == len(part) - 1:  # contiguous: every block between
                parts.append(np.arange(first, last + np.uint64(1), dtype=np.uint64))
                continue
            blk = part.vpn >> np.uint64(shift)
            parts.append(blk[np.concatenate(([True], blk[1:] != blk[:-1]))])
        keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        # Drop the repeats where chunks meet.
        return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys

    def count_outside(self, lo: int, hi: int) -> int:
        """Pages with vpn outside [lo, hi) (two binary searches: vpn is sorted)."""
        below = int(np.searchsorted(self.vpn, np.uint64(lo), side="left"))
        return below + len(self) - int(np.searchsorted(self.vpn, np.uint64(hi), side="left"))

    def count_accessed(self) -> int:
        return int(np.count_nonzero(self.accessed))

    def per_vma(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(resident, accessed): int64 pages of each of the ``n`` mappings (Vmas order)."""
        return (np.bincount(self.vma, minlength=n).astype(np.int64),
                np.bincount(self.vma[self.accessed], minlength=n).astype(np.int64))

    def node_type_range(self) -> tuple[int, int, int, int]:
        """(lowest node, highest node, lowest type, highest type) of the pages; not for none.
        A PageSet or PageChunk other than Pages may give a wider range than its pages span,
        never a narrower one."""
        return (int(self.node.min()), int(self.node.max()), int(self.type.min()),
                int(self.type.max()))


class _PageFields(Protocol):
    """What PageChunk and PageSet share: the fields of Pages, their length, and the range of
    their nodes and types (which may be wider than the pages span, never narrower)."""

    vpn: np.ndarray
    accessed: np.ndarray
    node: np.ndarray
    type: np.ndarray
    thp: np.ndarray
    vma: np.ndarray
    pfn: np.ndarray | None

    def __len__(self) -> int: ...
    def node_type_range(self) -> tuple[int, int, int, int]: ...


class PageChunk(_PageFields, Protocol):
    """A run of one harvest's pages (PageSet.chunks): Pages, or a source's equivalent whose
    fields are decoded on first use (same fields, same meaning; len and span as on Pages),
    so that a reader that needs only some fields pays only for those."""

    def span(self) -> tuple[int, int]: ...


class PageSet(_PageFields, Protocol):
    """The pages of one harvest: ``Pages``, or a source's equivalent that decodes on demand
    (same fields, same meaning; each method as on Pages)."""

    def chunks(self, n: int) -> Iterator[PageChunk]: ...
    def blocks(self, shift: int, chunk: int = ...) -> np.ndarray: ...
    def count_outside(self, lo: int, hi: int) -> int: ...
    def count_accessed(self) -> int: ...
    def per_vma(self, n: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class LruGenerations:
    """MGLRU's generation histogram of the target's memory cgroup at harvest time, as
    /sys/kernel/debug/lru_gen lists it: the kernel's view of the whole memcg (every process
    charged to it), not of the target alone. One row per (node, age rank), sorted.

    node: int32 NUMA node id; rank: int32 age rank, 0 = the node's youngest generation
    (MAX_GEN); anon, file: int64 pages on that generation's anon and file lists (signed, as
    the kernel prints them: a count can be briefly negative while pages move).
    """

    node: np.ndarray
    rank: np.ndarray
    anon: np.ndarray
    file: np.ndarray

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, int, int, int]]) -> LruGenerations:
        """From (node, rank, anon pages, file pages) rows, as ``lrugen.histogram`` gives."""
        a = np.array(sorted(rows), dtype=np.int64).reshape(-1, 4)
        return cls(a[:, 0].astype(np.int32), a[:, 1].astype(np.int32), a[:, 2], a[:, 3])

    def __len__(self) -> int:
        return len(self.node)


@dataclass(frozen=True)
class Unmonitored:
    """Mapped 4 KiB pages a harvest could not monitor, by reason
    (pageheat_unmonitored_pages{reason}): the walk only counts these VMAs (see bpf/ptwalk.h).

    hugetlb: hugetlbfs pages (clear_refs cannot age them); pfnmap: PFN maps (devices);
    vdso: the vDSO. 0 where the source saw none.
    """

    hugetlb: int = 0
    pfnmap: int = 0
    vdso: int = 0

    def nonzero(self) -> dict[str, int]:
        """{reason: pages} of the reasons with pages, in UNMONITORED_REASONS order."""
        return {r: n for r in UNMONITORED_REASONS if (n := getattr(self, r))}


UNMONITORED_REASONS = tuple(f.name for f in fields(Unmonitored))


@dataclass(frozen=True)
class Truncations:
    """What one harvest could not read, by reason (pageheat_walk_truncations_total{reason}):

    step_limit: ptwalk VMAs whose walk ran out of BPF steps; read_error: page-table reads that
    failed; young_map_full: young pages the mglru sources' BPF hash had no room for. Counts
    for this harvest, 0 where the source has no such limit.
    """

    step_limit: int = 0
    read_error: int = 0
    young_map_full: int = 0

    def by_reason(self) -> dict[str, int]:
        """{reason: count}, every reason (TRUNCATION_REASONS order), zeros included."""
        return {r: getattr(self, r) for r in TRUNCATION_REASONS}


TRUNCATION_REASONS = tuple(f.name for f in fields(Truncations))


def cpu_time() -> float:
    """The clock of Harvest.harvest_seconds and aging_seconds: this thread's CPU time (user +
    kernel), seconds. Per thread, so that the daemon's other threads do not count."""
    return time.thread_time()


@dataclass(frozen=True)
class Harvest:
    pid: int
    time: float  # time.monotonic() when the bits were read
    pages: PageSet
    vmas: Vmas
    harvest_seconds: float  # CPU time (user + kernel) of this thread to read the bits
    aging_seconds: float  # CPU time to begin the next interval
    counters: dict[str, int] = field(default_factory=dict)  # free-form debug counts, by name
    # MGLRU's histogram of the target's memcg (mglru sources); None: none read at this harvest.
    lru_gen: LruGenerations | None = None
    truncations: Truncations = Truncations()  # what this harvest could not read
    unmonitored: Unmonitored = Unmonitored()  # what its mappings hold that it cannot monitor
    aging_writes: int = 0  # aging requests this cycle made (mglru active aging), 0 for none
    # Generations the kernel added to the target's memcg since the last harvest (mglru
    # sources, by anyone); None: not known (no lru_gen read, or not an mglru source).
    generations_added: int | None = None
    # An opaque identity of the target's address space at this harvest (ptwalk's scan: its
    # mm_struct's address; kept in memory, never exported). Another one than at the last
    # harvest means the process exec'd: its old pages' history means nothing for the new
    # program's. None: the source cannot tell.
    address_space: int | None = None


def exec_between(previous: int | None, current: int | None) -> bool:
    """Whether two harvests' ``address_space`` values show an exec between them (None: the
    source cannot tell, so no)."""
    return previous is not None and current is not None and previous != current


class Source(Protocol):
    name: str

    def attach(self, pid: int) -> None:
        """Start following ``pid`` and begin its first interval. Raises TargetGone."""

    def cycle(self, pid: int) -> Harvest:
        """Report the interval's accesses and begin the next interval. Raises TargetGone."""

    def detach(self, pid: int) -> None:
        """Stop following ``pid`` and release what was held for it. Never raises."""

    def close(self) -> None:
        """Release everything. Never raises."""
