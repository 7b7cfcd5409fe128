"""`pageheat snapshot`: a few scans of one process, printed as one JSON object.

The JSON layout is public API (scripts and checks depend on it): add fields, never rename.
Scan i covers the interval between aging i-1 and aging i; aging 0 happens when the source
attaches, so accesses made before the command started are not counted.

Each mapping seen in any scan has a row: ``resident`` is its pages at the last scan (0 when
it was gone by then: unmapped, moved, or left behind by an exec), ``mapped`` says whether it
was still there, ``accessed`` has one count per scan (0 where it was not mapped). ``execs``
counts the address spaces the process changed to during the snapshot (sources that can tell).
A mapping is one row per (start, end, name, kind) and address space: one mapped over another
at the same addresses (MAP_FIXED), or the same addresses after an exec, is a row of its own.
``interrupted``: the command was stopped (SIGINT, SIGTERM) before its last scan; the scans
made so far are there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from pageheat.sources.base import (
    PAGE_TYPE_NAMES,
    TRUNCATION_REASONS,
    VMA_KIND_NAMES,
    Harvest,
    Pages,
    PageSet,
    Source,
    TargetGone,
    exec_between,
)

log = logging.getLogger("pageheat")


@dataclass
class _VmaRow:
    name: str
    kind: str
    resident: int = 0
    accessed: list[int] = field(default_factory=list)
    mapped: bool = True


def take(source: Source, pid: int, aging: float, scans: int,
         addr_range: tuple[int, int] | None = None, pages: bool = False) -> dict:
    """The snapshot of ``scans`` harvests ``aging`` seconds apart, as the JSON object the
    command prints. A process that exits is normal: the scans made so far, ``exited`` true.
    ``pages`` with ``addr_range`` (start, end addresses): every page in it, per scan. Raises
    SourceError and OSError from the source. Each harvest is summed up as it comes and then
    dropped (only the range's pages of it are kept, for ``pages``): memory does not grow
    with ``scans`` beyond the per-mapping counts the output holds."""
    try:
        source.attach(pid)
    except TargetGone:  # exited before the first aging: no scans
        return _exited_before_attach(pid, source.name, aging)
    vmas: dict[_VmaKey, _VmaRow] = {}
    address_space: int | None = None
    execs = 0
    harvest_ms: list[float] = []
    aging_cost_ms: list[float] = []
    truncations = dict.fromkeys(TRUNCATION_REASONS, 0)
    unmonitored: dict[str, int] = {}
    in_range: list[Pages] = []
    exited = interrupted = False
    started = time.monotonic()
    try:
        for i in range(scans):
            time.sleep(max(0.0, started + (i + 1) * aging - time.monotonic()))
            try:
                h = source.cycle(pid)
            except TargetGone:
                exited = True  # normal: report the scans we have
                break
            execs += exec_between(address_space, h.address_space)
            _add_scan(vmas, h, i, execs)
            address_space = h.address_space if h.address_space is not None else address_space
            harvest_ms.append(round(h.harvest_seconds * 1000, 3))
            aging_cost_ms.append(round(h.aging_seconds * 1000, 3))
            for r in TRUNCATION_REASONS:
                truncations[r] += getattr(h.truncations, r)
            unmonitored = h.unmonitored.nonzero()
            if pages and addr_range is not None:
                in_range.append(_range_pages(h.pages, addr_range))
            del h
    except KeyboardInterrupt:  # SIGINT, or SIGTERM as the command maps it: keep what was read
        interrupted = True
    finally:
        source.detach(pid)

    out: dict = {
        "pid": pid,
        "source": source.name,
        "aging_ms": round(aging * 1000, 3),
        "scans": len(harvest_ms),
        "harvest_ms": harvest_ms,
        "aging_cost_ms": aging_cost_ms,
        "exited": exited,
        "interrupted": interrupted,
        "execs": execs,
        "vmas": [{"start": hex(s), "end": hex(e), "name": r.name, "kind": r.kind,
                  "resident": r.resident, "mapped": r.mapped, "accessed": r.accessed}
                 for (s, e, *_), r in sorted(vmas.items())],
    }
    # Truncated harvests summed over the scans, and what the latest one could not monitor:
    # nothing resident or cut short vanishes silently (see exporter/serve/sanity.py).
    out["truncations"] = truncations
    out["unmonitored_pages"] = unmonitored
    for reason, n in out["truncations"].items():
        if n:
            log.warning("pid %d: %d harvest truncations (%s)", pid, n, reason)
    if pages and addr_range is not None:
        out["pages"] = _pages_in_range(in_range)
    return out


# start, end, name, kind, and the number of execs before the scan that saw it.
_VmaKey = tuple[int, int, str, str, int]


def _add_scan(vmas: dict[_VmaKey, _VmaRow], h: Harvest, i: int, execs: int) -> None:
    """Scan ``i``'s per-mapping counts into ``vmas`` (a mapping seen first at scan i gets 0
    for the scans before; one gone gets 0 from then on, resident 0 and mapped false).
    ``execs``: the execs seen up to this scan, so that a mapping of the new program is not
    the old one's row even at the same addresses."""
    per_vma_resident, per_vma_accessed = h.pages.per_vma(len(h.vmas))
    for row in vmas.values():
        row.resident, row.mapped = 0, False  # until this scan finds it again
    for j in range(len(h.vmas)):
        name, kind = h.vmas.names[j], VMA_KIND_NAMES[h.vmas.kind[j]]
        key = (int(h.vmas.start[j]), int(h.vmas.end[j]), name, kind, execs)
        row = vmas.get(key)
        if row is None:
            row = vmas[key] = _VmaRow(name, kind, accessed=[0] * i)
        row.resident, row.mapped = int(per_vma_resident[j]), True
        row.accessed.append(int(per_vma_accessed[j]))
    for row in vmas.values():
        row.accessed.extend([0] * (i + 1 - len(row.accessed)))


def _exited_before_attach(pid: int, source: str, aging: float) -> dict:
    """The snapshot of a process that was gone when the source attached. Its layout is public
    too, as it always was: without ``truncations`` and ``unmonitored_pages``, ``aging_ms``
    not rounded."""
    return {"pid": pid, "source": source, "aging_ms": aging * 1000, "scans": 0, "harvest_ms": [],
            "aging_cost_ms": [], "exited": True, "vmas": []}


def _range_pages(p: PageSet, addr_range: tuple[int, int]) -> Pages:
    """The pages of ``p`` in [start, end) addresses, copied out of the harvest's arrays."""
    lo, hi = np.uint64(addr_range[0] >> 12), np.uint64((addr_range[1] + 4095) >> 12)
    sel = (p.vpn >= lo) & (p.vpn < hi)
    return Pages(p.vpn[sel], p.accessed[sel], p.node[sel], p.type[sel], p.thp[sel], p.vma[sel])


def _pages_in_range(scans: list[Pages]) -> list[dict]:
    """Every page of any scan, in address order, with its accessed flag in each scan."""
    all_vpn = np.unique(np.concatenate([p.vpn for p in scans])) if scans else np.zeros(0, np.uint64)
    n = len(all_vpn)
    accessed = np.zeros((n, len(scans)), dtype=np.uint8)
    node = np.full(n, -1, dtype=np.int16)
    ptype = np.zeros(n, dtype=np.uint8)
    thp = np.zeros(n, dtype=bool)
    for i, p in enumerate(scans):
        idx = np.searchsorted(all_vpn, p.vpn)
        accessed[idx, i] = p.accessed
        node[idx], ptype[idx], thp[idx] = p.node, p.type, p.thp
    return [{"addr": hex(int(v) << 12), "scans": s, "node": int(nd), "type": PAGE_TYPE_NAMES[t],
             "thp": bool(th)}
            for v, s, nd, t, th in zip(all_vpn.tolist(), accessed.tolist(), node.tolist(),
                                       ptype.tolist(), thp.tolist(), strict=True)]
