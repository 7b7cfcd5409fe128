"""`pageheat snapshot`: a few scans of one process, printed as one JSON object.

The JSON layout is public API (scripts and checks depend on it): add fields, never rename.
Scan i covers the interval between aging i-1 and aging i; aging 0 happens when the source
attaches, so accesses made before the command started are not counted.
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
    Source,
    TargetGone,
)

log = logging.getLogger("pageheat")


@dataclass
class _VmaRow:
    name: str
    kind: str
    resident: int = 0
    accessed: list[int] = field(default_factory=list)


def take(source: Source, pid: int, aging: float, scans: int,
         addr_range: tuple[int, int] | None = None, pages: bool = False) -> dict:
    """The snapshot of ``scans`` harvests ``aging`` seconds apart, as the JSON object the
    command prints. A process that exits is normal: the scans made so far, ``exited`` true.
    ``pages`` with ``addr_range`` (start, end addresses): every page in it, per scan. Raises
    SourceError and OSError from the source."""
    try:
        source.attach(pid)
    except TargetGone:  # exited before the first aging: no scans
        return _exited_before_attach(pid, source.name, aging)
    harvests: list[Harvest] = []
    exited = False
    started = time.monotonic()
    try:
        for i in range(scans):
            time.sleep(max(0.0, started + (i + 1) * aging - time.monotonic()))
            try:
                harvests.append(source.cycle(pid))
            except TargetGone:
                exited = True  # normal: report the scans we have
                break
    finally:
        source.detach(pid)

    vmas: dict[tuple[int, int], _VmaRow] = {}
    for i, h in enumerate(harvests):
        per_vma_resident, per_vma_accessed = h.pages.per_vma(len(h.vmas))
        for j in range(len(h.vmas)):
            key = (int(h.vmas.start[j]), int(h.vmas.end[j]))
            row = vmas.get(key)
            if row is None:
                row = vmas[key] = _VmaRow(h.vmas.names[j], VMA_KIND_NAMES[h.vmas.kind[j]],
                                          accessed=[0] * i)
            row.resident = int(per_vma_resident[j])
            row.accessed.append(int(per_vma_accessed[j]))
        for row in vmas.values():
            row.accessed.extend([0] * (i + 1 - len(row.accessed)))

    out: dict = {
        "pid": pid,
        "source": source.name,
        "aging_ms": round(aging * 1000, 3),
        "scans": len(harvests),
        "harvest_ms": [round(h.harvest_seconds * 1000, 3) for h in harvests],
        "aging_cost_ms": [round(h.aging_seconds * 1000, 3) for h in harvests],
        "exited": exited,
        "vmas": [{"start": hex(s), "end": hex(e), "name": r.name, "kind": r.kind,
                  "resident": r.resident, "accessed": r.accessed}
                 for (s, e), r in sorted(vmas.items())],
    }
    # Truncated harvests summed over the scans, and what the latest one could not monitor:
    # nothing resident or cut short vanishes silently (see exporter/serve/sanity.py).
    out["truncations"] = {r: sum(getattr(h.truncations, r) for h in harvests)
                          for r in TRUNCATION_REASONS}
    out["unmonitored_pages"] = harvests[-1].unmonitored.nonzero() if harvests else {}
    for reason, n in out["truncations"].items():
        if n:
            log.warning("pid %d: %d harvest truncations (%s)", pid, n, reason)
    if pages and addr_range is not None:
        out["pages"] = _pages_in_range(harvests, addr_range)
    return out


def _exited_before_attach(pid: int, source: str, aging: float) -> dict:
    """The snapshot of a process that was gone when the source attached. Its layout is public
    too, as it always was: without ``truncations`` and ``unmonitored_pages``, ``aging_ms``
    not rounded."""
    return {"pid": pid, "source": source, "aging_ms": aging * 1000, "scans": 0, "harvest_ms": [],
            "aging_cost_ms": [], "exited": True, "vmas": []}


def _pages_in_range(harvests: list[Harvest], addr_range: tuple[int, int]) -> list[dict]:
    lo, hi = np.uint64(addr_range[0] >> 12), np.uint64((addr_range[1] + 4095) >> 12)
    picked = []
    for h in harvests:
        sel = (h.pages.vpn >= lo) & (h.pages.vpn < hi)
        picked.append(sel)
    all_vpn = np.unique(np.concatenate([h.pages.vpn[s] for h, s in zip(harvests, picked, strict=True)])
                        if harvests else np.zeros(0, np.uint64))
    n = len(all_vpn)
    scans = np.zeros((n, len(harvests)), dtype=np.uint8)
    node = np.full(n, -1, dtype=np.int16)
    ptype = np.zeros(n, dtype=np.uint8)
    thp = np.zeros(n, dtype=bool)
    for i, (h, sel) in enumerate(zip(harvests, picked, strict=True)):
        idx = np.searchsorted(all_vpn, h.pages.vpn[sel])
        scans[idx, i] = h.pages.accessed[sel]
        node[idx], ptype[idx], thp[idx] = h.pages.node[sel], h.pages.type[sel], h.pages.thp[sel]
    return [{"addr": hex(int(v) << 12), "scans": s, "node": int(nd), "type": PAGE_TYPE_NAMES[t],
             "thp": bool(th)}
            for v, s, nd, t, th in zip(all_vpn.tolist(), scans.tolist(), node.tolist(),
                                       ptype.tolist(), thp.tolist(), strict=True)]
