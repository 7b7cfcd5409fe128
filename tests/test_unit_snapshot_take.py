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


def accessed_in(first_vpn: int, scan: int) -> int:
    """ScriptedSource's truth: pages of the mapping at first_vpn accessed in a scan."""
    return sum((v + scan) % 3 == 0 for v in range(first_vpn, first_vpn + N))


def test_a_mapping_gone_by_the_last_scan_is_not_resident() -> None:
    out = take(UnmappingSource(), 1, 0.0, 5)
    # The first mapping before the exec, the same addresses in the new program, the second.
    old, new, second = out["vmas"]
    assert (old["start"], old["name"]) == (new["start"], new["name"])
    assert old["resident"] == 0 and not old["mapped"]
    assert old["accessed"] == [accessed_in(BASE, i) for i in range(3)] + [0, 0]
    assert new["resident"] == N and new["mapped"]
    assert new["accessed"] == [0, 0, 0] + [accessed_in(BASE, i) for i in (3, 4)]
    assert second["resident"] == 0 and not second["mapped"]
    assert second["accessed"] == [accessed_in(BASE + 2 * N, 0), 0, 0, 0, 0]
    assert out["execs"] == 1 and not out["interrupted"]
    assert sum(v["resident"] for v in out["vmas"]) == N  # what the process holds at the end


class ReplacingSource(ScriptedSource):
    """From scan 2 on, the second mapping is a file mapped over it at the same addresses
    (MAP_FIXED), in the same address space."""

    def cycle(self, pid: int) -> Harvest:
        h = super().cycle(pid)
        if self.scan - 1 < 2:
            return h
        kind = h.vmas.kind.copy()
        kind[1] = VmaKind.FILE
        return replace(h, vmas=replace(h.vmas, kind=kind, names=["", "/data/file"]))


def test_a_mapping_replaced_at_the_same_addresses_is_a_row_of_its_own() -> None:
    out = take(ReplacingSource(), 1, 0.0, 4)
    first, anon, file = out["vmas"]
    assert (anon["start"], anon["end"]) == (file["start"], file["end"])
    assert (anon["name"], anon["kind"], anon["mapped"], anon["resident"]) == ("", "anon", False, 0)
    assert (file["name"], file["kind"], file["mapped"], file["resident"]) == ("/data/file", "file", True, N)
    assert anon["accessed"] == [accessed_in(BASE + 2 * N, i) for i in (0, 1)] + [0, 0]
    assert file["accessed"] == [0, 0] + [accessed_in(BASE + 2 * N, i) for i in (2, 3)]
    assert first["accessed"] == [accessed_in(BASE, i) for i in range(4)]


class InterruptedSource(ScriptedSource):
    """Ctrl-C (SIGINT) arrives during the fourth scan."""

    def cycle(self, pid: int) -> Harvest:
        if self.scan == 3:
            raise KeyboardInterrupt
        return super().cycle(pid)


def test_an_interrupted_snapshot_keeps_its_scans() -> None:
    out = take(InterruptedSource(), 1, 0.0, 10)
    assert out["interrupted"] and not out["exited"] and out["scans"] == 3
    assert out["vmas"][0]["accessed"] == [accessed_in(BASE, i) for i in range(3)]
