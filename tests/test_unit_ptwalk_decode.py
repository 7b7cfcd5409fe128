"""ptwalk's decode (per-table bitmaps -> per-page arrays) against a slow reference decoder
that walks every bit in Python, on synthetic tables: dense, partial, huge, copy-on-write,
several NUMA nodes. Also: reused output buffers are never shared with live Pages."""

from __future__ import annotations

import numpy as np
import pytest
from pageheat.kernel.numa import NodeMap
from pageheat.sources import pagetable
from pageheat.sources.base import PageType, VmaKind

ONE_NODE = NodeMap(np.array([0], np.uint64), np.array([1 << 30], np.uint64),
                   np.array([0], np.int16), (0,), 1 << 30)
# Two nodes: frames below 0x40000 on node 0, from 0x40000 on node 3; holes give -1.
TWO_NODES = NodeMap(np.array([0, 0x40000], np.uint64), np.array([0x30000, 0x80000], np.uint64),
                    np.array([0, 3], np.int16), (0, 3), 0x80000)
KIND_TYPE = {VmaKind.ANON: PageType.ANON, VmaKind.FILE: PageType.FILE,
             VmaKind.SHMEM: PageType.SHMEM, VmaKind.HEAP: PageType.ANON,
             VmaKind.STACK: PageType.ANON, VmaKind.OTHER: PageType.ANON}


def reference(vmas: np.ndarray, tables: np.ndarray, raw: np.ndarray, nodes: NodeMap) -> dict:
    """One page at a time, from the bit definitions in bpf/ptwalk.h."""
    out: dict[str, list] = {k: [] for k in ("vpn", "accessed", "node", "type", "thp", "vma", "pfn")}
    for t, rec in enumerate(tables):
        v = int(rec["vma"])
        kind = VmaKind(int(vmas["kind"][v]))
        private = not int(vmas["flags"][v]) & pagetable.VmaFlag.SHARED
        huge = bool(int(rec["flags"]) & pagetable.TableFlag.HUGE)
        for i in range(512):
            word, bit = divmod(i, 64)
            if not int(rec["present"][word]) >> bit & 1:
                continue
            written = int(rec["written"][word]) >> bit & 1
            ptype = KIND_TYPE[kind]
            if private and kind in (VmaKind.FILE, VmaKind.SHMEM) and written:
                ptype = PageType.ANON
            if huge:
                pfn = ((int(rec["pmd"]) & 0x000FFFFFFFFFF000) >> 12) + i
            else:
                pfn = (int(raw[t, i]) & 0x000FFFFFFFFFF000) >> 12 if len(raw) else 0
            out["vpn"].append((int(rec["addr"]) >> 12) + i)
            out["accessed"].append(bool(int(rec["accessed"][word]) >> bit & 1))
            out["node"].append(int(nodes.node_of(np.array([pfn], np.uint64))[0]))
            out["type"].append(int(ptype))
            out["thp"].append(huge)
            out["vma"].append(v)
            out["pfn"].append(pfn)
    return out


def synthetic(rng: np.random.Generator, n_tables: int, layout: str) -> tuple[np.ndarray, ...]:
    """layout: "dense" (every page present), "partial" (half the bits of random words),
    "sparse" (a few pages per table in one or two words, as 60,000 small mappings give)."""
    kinds = [VmaKind.ANON, VmaKind.FILE, VmaKind.FILE, VmaKind.SHMEM, VmaKind.SHMEM, VmaKind.HEAP]
    vmas = np.zeros(len(kinds), dtype=pagetable._VMA)
    vmas["kind"] = kinds
    vmas["flags"] = [0, 0, 1, 0, 1, 0]  # shared: the third and fifth
    tables = np.zeros(n_tables, dtype=pagetable._TABLE)
    step = np.arange(n_tables, dtype=np.uint64) * np.uint64(3)  # gaps between tables
    tables["addr"] = (step + np.uint64(0x3F000)) << np.uint64(21)
    tables["vma"] = np.sort(rng.integers(0, len(kinds), n_tables))
    words = lambda: rng.integers(0, 1 << 63, size=(n_tables, 8), dtype=np.uint64) * np.uint64(2) \
        + rng.integers(0, 2, size=(n_tables, 8), dtype=np.uint64)  # noqa: E731
    if layout == "dense":
        present = np.full((n_tables, 8), ~np.uint64(0))
    elif layout == "partial":
        present = words()
    else:
        present = np.zeros((n_tables, 8), np.uint64)
        at = rng.integers(0, 8, n_tables)
        present[np.arange(n_tables), at] = np.uint64(3) << rng.integers(0, 62, n_tables).astype(np.uint64)
        present[::5, 7] |= np.uint64(1) << np.uint64(63)  # the last page of a table
    if layout != "dense":
        present[0] = 0
        present[1, 3:] = ~np.uint64(0)
    huge = rng.random(n_tables) < 0.2
    tables["flags"] = huge.astype(np.uint32)
    tables["pmd"] = (rng.integers(0x100, 0x3FF, n_tables, dtype=np.uint64) << np.uint64(21)) | np.uint64(0xE7)
    tables["present"] = present
    tables["accessed"] = words() & present
    tables["written"] = words() & present
    raw = (rng.integers(0, 0x80000, size=(n_tables, 512), dtype=np.uint64) << np.uint64(12)) | np.uint64(0x67)
    return vmas, tables, raw


@pytest.mark.parametrize("layout", ["dense", "partial", "sparse"])
@pytest.mark.parametrize("nodes", [ONE_NODE, TWO_NODES], ids=["one-node", "two-nodes"])
def test_decode_matches_reference(layout: str, nodes: NodeMap) -> None:
    rng = np.random.default_rng(13)
    vmas, tables, raw = synthetic(rng, 40, layout)
    want = reference(vmas, tables, raw, nodes)
    got = pagetable._pages(vmas, tables, raw, nodes, pagetable._Buffers())
    assert len(got) == len(want["vpn"]) > 0
    assert got.pfn is not None
    for field, dtype in (("vpn", np.uint64), ("accessed", bool), ("node", np.int16),
                         ("type", np.uint8), ("thp", bool), ("vma", np.int32), ("pfn", np.uint64)):
        arr = getattr(got, field)
        assert arr.dtype == dtype, field
        assert arr.tolist() == want[field], field
    assert (np.diff(got.vpn.astype(np.int64)) > 0).all()
    if nodes is TWO_NODES:
        assert {-1, 0, 3} <= set(got.node.tolist())  # the holes are exercised too


def test_no_tables_no_pages() -> None:
    vmas, tables, raw = synthetic(np.random.default_rng(1), 3, "dense")
    got = pagetable._pages(vmas, tables[:0], raw[:0], ONE_NODE, pagetable._Buffers())
    assert len(got) == 0 and got.vpn.dtype == np.uint64


def test_buffers_are_reused_only_when_released() -> None:
    vmas, tables, raw = synthetic(np.random.default_rng(2), 8, "dense")
    buffers = pagetable._Buffers()
    first = pagetable._pages(vmas, tables, raw, ONE_NODE, buffers)
    kept = first.vpn.copy()
    tables2 = tables.copy()
    tables2["addr"] += np.uint64(1 << 40)
    second = pagetable._pages(vmas, tables2, raw, ONE_NODE, buffers)
    assert np.array_equal(first.vpn, kept)  # the live harvest was not overwritten
    assert not np.shares_memory(first.vpn, second.vpn)
    address = second.vpn.__array_interface__["data"][0]
    del first, second
    third = pagetable._pages(vmas, tables, raw, ONE_NODE, buffers)
    assert third.vpn.__array_interface__["data"][0] == address  # released: reused
    assert np.array_equal(third.vpn, kept)


@pytest.mark.parametrize("layout", ["dense", "partial", "sparse"])
def test_table_pages_answer_as_the_decoded_pages_do(layout: str) -> None:
    """TablePages (decoded a chunk at a time, for serve) against the Pages of the same tables:
    every PageSet question, and every chunk size down to one table."""
    rng = np.random.default_rng(5)
    vmas, tables, _ = synthetic(rng, 40, layout)
    tables["flags"] = 0  # ptwalk marks huge PMDs with full present bitmaps; not at issue here
    tables[3] = tables[2]  # two VMAs' tables of the same 2 MiB region: a word can be both's
    tables["vma"][3] = min(int(tables["vma"][2]) + 1, len(vmas) - 1)
    tables["present"][2, 4:] = 0
    tables["present"][3, :4] = 0
    tables["present"][3, 4] &= ~np.uint64(1)
    want = pagetable._pages(vmas, tables, pagetable._NO_RAW, ONE_NODE)
    for n in (512, 700, 5000, 1 << 16):
        got = pagetable.TablePages(vmas, tables.copy(), ONE_NODE)
        assert len(got) == len(want)
        parts = list(got.chunks(n))
        assert all(0 < len(part) <= n for part in parts)
        for field in ("vpn", "accessed", "node", "type", "thp", "vma"):
            joined = np.concatenate([getattr(part, field) for part in parts])
            assert np.array_equal(joined, getattr(want, field)), (field, n)
        # Runs of full tables decode field by field (_FullTables); what they answer without
        # decoding (span, the node and type range) holds for the pages they decode to.
        # Dense: tables 2 and 3 are partial, so 0 and 1 are a run of full tables too short to
        # be chunks of their own (FULL_RUN_MIN); 4 to 39 are one, whatever the chunk size.
        full = [part for part in parts if isinstance(part, pagetable._FullTables)]
        assert pagetable.FULL_RUN_MIN > 2
        assert sum(len(part) for part in full) == (36 * 512 if layout == "dense" else 0), n
        for part in parts:
            assert part.span() == (int(part.vpn[0]), int(part.vpn[-1]))
            lo, hi, tlo, thi = part.node_type_range()
            assert lo <= int(part.node.min()) and int(part.node.max()) <= hi
            assert tlo <= int(part.type.min()) and int(part.type.max()) <= thi
            if lo == hi and tlo == thi:
                assert (part.node == lo).all() and (part.type == tlo).all()
        assert np.array_equal(got.blocks(6), want.blocks(6))
        assert got.count_accessed() == want.count_accessed()
        assert got.node_type_range() == want.node_type_range()
        resident, accessed = got.per_vma(len(vmas))
        assert resident.tolist() == [int((want.vma == j).sum()) for j in range(len(vmas))]
        assert accessed.tolist() == [int((want.accessed & (want.vma == j)).sum())
                                     for j in range(len(vmas))]
        assert all(np.array_equal(a, b) for a, b in zip(want.per_vma(len(vmas)), (resident, accessed),
                                                        strict=True))
        addr = [int(a) >> 12 for a in tables["addr"]]
        for lo, hi in ((0, 1 << 40), (addr[5] + 100, addr[30] + 7), (addr[0] + 511, addr[0] + 513)):
            assert got.count_outside(lo, hi) == want.count_outside(lo, hi), (lo, hi)
        assert got.pfn is None
        assert np.array_equal(got.vpn, want.vpn)  # a field read decodes the whole target
        assert np.array_equal(np.concatenate([p.vpn for p in got.chunks(n)]), want.vpn)


@pytest.mark.parametrize("layout", ["partial", "dense"])
def test_aggregate_of_table_pages_equals_that_of_decoded_pages(monkeypatch: pytest.MonkeyPatch,
                                                               layout: str) -> None:
    """serve's aggregator fed TablePages (in several chunks) gives the views it gives for the
    Pages of the same tables, harvest after harvest, as resident sets and accesses change.
    "dense": tables side by side, every page present for the first three harvests, so the
    chunks are contiguous runs of full tables (_FullTables), updated in place from the
    second harvest on, with copy-on-write copies among them."""
    from pageheat.model import aggregate
    from pageheat.sources.base import Harvest, Vmas

    monkeypatch.setattr(aggregate, "CHUNK", 1024)
    rng = np.random.default_rng(11)
    vmas, tables, _ = synthetic(rng, 40, layout)
    tables["flags"] = 0
    if layout == "dense":
        tables["addr"] = (np.arange(40, dtype=np.uint64) + np.uint64(0x3F000)) << np.uint64(21)
    # One mapping per synthetic VMA record, side by side over the tables' span.
    span = np.linspace(int(tables["addr"][0]), int(tables["addr"][-1]) + (2 << 20), len(vmas) + 1)
    edges = (span.astype(np.uint64) >> np.uint64(12)) << np.uint64(12)
    v = Vmas(edges[:-1], edges[1:], vmas["kind"].astype(np.uint8), np.ones(len(vmas), bool),
             ["/lib/a.so", "", "/data/f", "", "/dev/shm/x", "[heap]"])
    lazy_state, whole_state = (aggregate.TargetState(1, "x", 8, 30.0) for _ in range(2))
    for k, t in enumerate([10.0, 11.0, 13.5, 40.0, 41.0]):
        if k >= (3 if layout == "dense" else 1):
            tables["present"] &= rng.integers(0, 1 << 63, tables["present"].shape, dtype=np.uint64) | \
                np.uint64(0xFFFF_FFFF_0000_0000)
        if k:
            tables["accessed"] = rng.integers(0, 1 << 63, tables["present"].shape, dtype=np.uint64)
            tables["accessed"] &= tables["present"]
        lazy = pagetable.TablePages(vmas, tables.copy(), ONE_NODE)
        if layout == "dense" and k < 3:
            for part in lazy.chunks(aggregate.CHUNK):
                first, last = part.span()
                assert isinstance(part, pagetable._FullTables) and last - first == len(part) - 1
        whole = pagetable._pages(vmas, tables, pagetable._NO_RAW, ONE_NODE)
        a = lazy_state.update(Harvest(1, t, lazy, v, 0.0, 0.0), 1.0)
        b = whole_state.update(Harvest(1, t, whole, v, 0.0, 0.0), 1.0)
        assert a.combos == b.combos and a.rebins == b.rebins
        for field in ("accessed_cum", "resident", "idle", "idle_seconds", "promoted", "promoted_seconds"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), (field, k)
        assert (a.never_accessed, a.wss_pages, a.resident_pages, a.cold_pages) == \
            (b.never_accessed, b.wss_pages, b.resident_pages, b.cold_pages)


@pytest.mark.parametrize("layout", ["dense", "partial", "sparse", "shared"])
def test_table_blocks_are_the_decoded_pages_blocks(layout: str) -> None:
    """TablePages.blocks skips its masks where every word is present and no two tables share
    a word (a dense heap): the blocks are still those of the decoded pages' addresses. "shared":
    two VMAs meet inside a 64-page word of one 2 MiB region, so both their tables have it."""
    vmas, tables, _ = synthetic(np.random.default_rng(9), 30, "dense" if layout == "shared" else layout)
    if layout == "shared":
        tables[3] = tables[2]
        tables["vma"][3] = min(int(tables["vma"][2]) + 1, len(vmas) - 1)
        tables["present"][2, 4] = np.uint64(0xFFFFFFFF)  # the word's low 32 pages: the first VMA's
        tables["present"][2, 5:] = 0
        tables["present"][3, :4] = 0
        tables["present"][3, 4] = np.uint64(0xFFFFFFFF) << np.uint64(32)  # its high 32: the second's
    want = pagetable._pages(vmas, tables, pagetable._NO_RAW, ONE_NODE)
    got = pagetable.TablePages(vmas, tables, ONE_NODE).blocks(6)
    assert np.array_equal(got, np.unique(want.vpn >> np.uint64(6)))
    assert np.array_equal(got, want.blocks(6))


def test_table_pages_only_where_the_records_are_smaller_than_the_arrays() -> None:
    """serve's lazy pages: a dense layout (512 pages a 216-byte record) is kept as tables, a
    sparse one (a page or two a record, as 60,000 small mappings give) is decoded."""
    for layout, lazy in (("dense", True), ("sparse", False)):
        vmas, tables, _ = synthetic(np.random.default_rng(3), 40, layout)
        got = pagetable.TablePages.if_smaller(vmas, tables, ONE_NODE)
        pages = pagetable._pages(vmas, tables, pagetable._NO_RAW, ONE_NODE)
        assert (pagetable._TABLE.itemsize * len(tables) < pagetable._PAGES_BYTES * len(pages)) is lazy
        assert (got is not None) is lazy, layout
        if got is not None:
            assert got._table_records is tables and len(got) == len(pages)  # no copy


def test_a_chunk_read_after_the_next_scan_is_an_error_not_another_scans_pages() -> None:
    """Runs of full tables decode their fields when read, from the BPF map's records in place:
    once the source has scanned again, a field not read yet raises SourceError, as
    TablePages' own reads do."""
    from pageheat.sources.base import SourceError

    vmas, tables, _ = synthetic(np.random.default_rng(4), 8, "dense")
    scans = [1]
    got = pagetable.TablePages(vmas, tables, ONE_NODE, valid=lambda: scans[0] == 1)
    part = next(iter(got.chunks(1024)))
    assert isinstance(part, pagetable._FullTables)
    accessed = part.accessed  # read before the next scan: kept
    scans[0] += 1
    assert np.array_equal(part.accessed, accessed)
    for read in (lambda: part.vpn, lambda: part.type, part.span):
        with pytest.raises(SourceError, match="after the source scanned again"):
            read()
