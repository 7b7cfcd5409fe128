"""Unit test for exporter/commands/snapshot.py's take(): a snapshot of many scans keeps no
harvest alive after it is summed up, and its numbers are those of the harvests.

The source is a stand-in that hands out synthetic harvests (pure logic: what take keeps);
the snapshot against real processes is tested in tests/test_realworld_pages.py."""

from __future__ import annotations

import weakref
from dataclasses import replace

import numpy as np
from pageheat.commands.snapshot import take
from pageheat.sources.base import Harvest, Pages, VmaKind, Vmas

PAGE = 4096
BASE = 0x10000  # vpn of the first mapping
N = 3000  # pages of each of the two mappings


class ScriptedSource:
    """Each cycle: both mappings fully resident, page v accessed in scan i when (v + i) % 3 == 0."""

    name = "scripted"

    def __init__(self) -> None:
        self.scan = 0
        self.live: list[weakref.ref] = []  # the pages of every harvest handed out
        self.alive_at_cycle: list[int] = []

    def attach(self, pid: int) -> None:
        pass

    def detach(self, pid: int) -> None:
        pass

    def cycle(self, pid: int) -> Harvest:
        self.alive_at_cycle.append(sum(r() is not None for r in self.live))
        vpn = np.concatenate([np.arange(BASE, BASE + N),
                              np.arange(BASE + 2 * N, BASE + 3 * N)]).astype(np.uint64)
        accessed = (vpn + np.uint64(self.scan)) % np.uint64(3) == 0
        n = len(vpn)
        pages = Pages(vpn, accessed, np.zeros(n, np.int16), np.zeros(n, np.uint8), np.zeros(n, bool),
                      np.repeat(np.arange(2, dtype=np.int32), N))
        self.live.append(weakref.ref(pages))
        vmas = Vmas(np.array([BASE * PAGE, (BASE + 2 * N) * PAGE], np.uint64),
                    np.array([(BASE + N) * PAGE, (BASE + 3 * N) * PAGE], np.uint64),
                    np.array([VmaKind.ANON, VmaKind.ANON], np.uint8), np.array([True, True]), ["", ""])
        self.scan += 1
        return Harvest(pid, float(self.scan), pages, vmas, 0.001, 0.002)


def test_take_keeps_no_harvest_and_counts_each_scan() -> None:
    scans, lo = 12, (BASE + N - 5) * PAGE  # a range across the gap: 5 pages, gap, 5 pages
    src = ScriptedSource()
    out = take(src, 1, 0.0, scans, addr_range=(lo, (BASE + 2 * N + 5) * PAGE), pages=True)
    assert src.alive_at_cycle == [0] * scans  # each harvest was dropped before the next
    assert out["scans"] == scans and out["harvest_ms"] == [1.0] * scans
    for k, row in enumerate(out["vmas"]):
        first = BASE + 2 * N * k
        want = [sum((v + i) % 3 == 0 for v in range(first, first + N)) for i in range(scans)]
        assert row["resident"] == N and row["accessed"] == want
    want_pages = list(range(BASE + N - 5, BASE + N)) + list(range(BASE + 2 * N, BASE + 2 * N + 5))
    assert [int(p["addr"], 16) >> 12 for p in out["pages"]] == want_pages
    for p in out["pages"]:
        v = int(p["addr"], 16) >> 12
        assert p["scans"] == [int((v + i) % 3 == 0) for i in range(scans)]


class UnmappingSource(ScriptedSource):
    """Scan 0: both mappings; from scan 1 on the second is gone; scan 3 is another address
    space (an exec) with the first mapping only."""

    def cycle(self, pid: int) -> Harvest:
        h = super().cycle(pid)
        i = self.scan - 1
        keep = slice(0, N) if i >= 1 else slice(None)
        pages = Pages(h.pages.vpn[keep], h.pages.accessed[keep], h.pages.node[keep], h.pages.type[keep],
                      h.pages.thp[keep], h.pages.vma[keep])
        vmas = h.vmas if i == 0 else Vmas(h.vmas.start[:1], h.vmas.end[:1], h.vmas.kind[:1],
                                          h.vmas.accessible[:1], h.vmas.names[:1])
        return replace(h, pages=pages, vmas=vmas, address_space=0xA if i < 3 else 0xB)


def test_a_mapping_gone_by_the_last_scan_is_not_resident() -> None:
    out = take(UnmappingSource(), 1, 0.0, 5)
    first, second = out["vmas"]
    assert first["resident"] == N and first["mapped"]
    assert second["resident"] == 0 and not second["mapped"]
    assert second["accessed"][1:] == [0, 0, 0, 0] and second["accessed"][0] > 0
    assert out["execs"] == 1
    assert sum(v["resident"] for v in out["vmas"]) == N  # what the process holds at the end
