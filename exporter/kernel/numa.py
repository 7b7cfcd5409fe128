"""NUMA node of a physical frame, from the memory blocks each node owns in sysfs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SYS = Path("/sys")


@dataclass(frozen=True)
class NodeMap:
    """Sorted, non-overlapping PFN ranges [start, end) and the node owning each."""

    start: np.ndarray  # uint64
    end: np.ndarray  # uint64
    node: np.ndarray  # int16
    nodes: tuple[int, ...]
    max_pfn: int

    @classmethod
    def from_sysfs(cls, sys: Path = SYS) -> NodeMap:
        block = int((sys / "devices/system/memory/block_size_bytes").read_text(), 16) >> 12
        ranges: list[tuple[int, int, int]] = []
        nodes = []
        node_dirs = (sys / "devices/system/node").glob("node[0-9]*")
        for node_dir in sorted(node_dirs, key=lambda d: int(d.name[4:])):
            nid = int(node_dir.name[4:])
            nodes.append(nid)
            for mem in node_dir.glob("memory[0-9]*"):
                b = int(re.sub(r"\D", "", mem.name))
                ranges.append((b * block, (b + 1) * block, nid))
        if not nodes:  # CONFIG_NUMA=n: everything is node 0
            nodes = [0]
        ranges.sort()
        start = np.array([r[0] for r in ranges], dtype=np.uint64)
        end = np.array([r[1] for r in ranges], dtype=np.uint64)
        node = np.array([r[2] for r in ranges], dtype=np.int16)
        max_pfn = int(end[-1]) if len(end) else 0
        return cls(start, end, node, tuple(nodes), max_pfn)

    @property
    def single(self) -> int | None:
        """The node id when there is only one node: then no PFN needs looking up."""
        return self.nodes[0] if len(self.nodes) == 1 else None

    def node_of(self, pfn: np.ndarray) -> np.ndarray:
        """Node of each PFN; -1 for frames in no node's blocks (device memory, holes) when
        there are several nodes. With one node every frame is that node's: no lookup."""
        if self.single is not None:
            return np.full(len(pfn), self.single, dtype=np.int16)
        i = np.searchsorted(self.start, pfn, side="right") - 1
        ok = (i >= 0) & (pfn < self.end[np.clip(i, 0, None)])
        return np.where(ok, self.node[np.clip(i, 0, None)], -1).astype(np.int16)
