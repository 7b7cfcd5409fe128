"""ptwalk: a BPF task_vma iterator reads the target's page tables; clear_refs ages them.

Works on any x86-64 kernel with BTF and BPF iterators (5.12+ for task_vma with a pid filter:
5.19). Aging by clear_refs also clears the referenced state that reclaim uses, which is why
the MGLRU sources exist.

The scan is ``pagetable.PageTableScan``, the read-only half (the BPF scan and its decode, no
aging, no CAP_SYS_ADMIN), which the mglru sources share; ``PtwalkSource`` adds the aging by
clear_refs.
"""

from __future__ import annotations

import time
from pathlib import Path

from pageheat.kernel import procfs
from pageheat.kernel.numa import NodeMap
from pageheat.sources import TlbFlush
from pageheat.sources.base import Harvest, TargetGone, cpu_time
from pageheat.sources.pagetable import PageTableScan


class PtwalkSource(PageTableScan):
    """The scan, aged by clear_refs: each cycle reports the pages accessed since the last."""

    name = "ptwalk"

    def __init__(self, obj: Path | None = None, nodes: NodeMap | None = None,
                 tlb_flush: TlbFlush | str = TlbFlush.AUTO, check_young: bool | None = None,
                 pfns: bool = False, bpf_dir: Path | None = None, lazy_pages: bool = False) -> None:
        # See _age and TlbFlush.wanted (the Config passes its tlb_flush).
        self.tlb_flush = TlbFlush(tlb_flush).wanted(procfs.soft_dirty_tracking)
        self.lazy_pages = lazy_pages  # see SourceOptions
        super().__init__(obj, nodes, check_young, pfns, bpf_dir)

    def attach(self, pid: int) -> None:
        if pid in self._targets:
            return
        # clear_refs first: a process we may not age (PermissionError) is never half attached.
        try:
            refs = procfs.ClearRefs(pid)
        except (FileNotFoundError, ProcessLookupError) as e:
            raise TargetGone(pid) from e
        try:
            super().attach(pid)
        except BaseException:
            refs.close()
            raise
        self._targets[pid].clear_refs = refs
        try:
            self._age(pid)
        except TargetGone:
            self.detach(pid)
            raise

    def attach_scanner(self, pid: int) -> None:
        """Follow ``pid`` for ``harvest`` and ``_scan`` only: no aging, so no hold on its
        clear_refs, which one ager of a process has (procfs.ClearRefs). For benchmarks and
        tests that scan one process with several sources side by side; ``cycle`` needs
        ``attach``. Raises TargetGone."""
        super().attach(pid)

    def cycle(self, pid: int) -> Harvest:
        t0 = cpu_time()
        pages, vmas, report = self.harvest(pid, lazy=self.lazy_pages)
        now = time.monotonic()
        t1 = cpu_time()
        self._age(pid)
        t2 = cpu_time()
        return Harvest(pid, now, pages, vmas, t1 - t0, t2 - t1, report.counters,
                       truncations=report.truncations, unmonitored=report.unmonitored,
                       address_space=report.address_space)

    def _age(self, pid: int) -> None:
        """Clear the Accessed bits. x86 does not flush the TLB when clearing them, and a CPU
        sets the bit only when it walks the page table: a page whose translation stays cached
        goes unseen however often it is used (measured: tens of hot pages per scan for a
        tight loop). Writing 4 (clear soft-dirty) ends with a full TLB flush of the mm; on a
        kernel without CONFIG_MEM_SOFT_DIRTY it changes nothing else."""
        refs = self._targets[pid].clear_refs
        assert refs is not None  # opened in attach
        try:
            refs.write(b"1")
            if self.tlb_flush:
                refs.write(b"4")
        except (ProcessLookupError, FileNotFoundError) as e:
            raise TargetGone(pid) from e
