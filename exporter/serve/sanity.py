"""Notice a source failing silently, from each harvest's own numbers.

``Sanity.check(harvest, comm)`` runs once per harvest (one line in ``Daemon._cycle``). It:

* counts walk truncations by reason (``Harvest.truncations``: ptwalk VMAs whose walk ran out
  of steps, page-table reads that failed; young pages the mglru sources' BPF hash had no room
  for) into ``pageheat_walk_truncations_total{reason}``, and logs the first one of each reason
  per target;
* keeps the pages each target has that pageheat cannot monitor, by reason
  (``Harvest.unmonitored``: hugetlb, PFN maps, the vDSO; see bpf/ptwalk.h), for
  ``pageheat_unmonitored_pages{pid,comm,reason}``;
* flags aging that does nothing (``pageheat_aging_ineffective_total{reason}``, logged once per
  target): every resident page of a target with more than ``MIN_PAGES`` pages accessed in
  ``SUSPECT_HARVESTS`` harvests in a row (``all_accessed``: a clear_refs that clears nothing,
  as for a zombie thread-group leader; a real process always has some idle pages), or an
  active MGLRU aging request after which the memcg has no new generation
  (``no_new_generation``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pageheat.kernel.procfs import shown
from pageheat.serve.stats import Stats
from pageheat.sources.base import Harvest, exec_between

log = logging.getLogger("pageheat")

AGING_REASONS = ("all_accessed", "no_new_generation")
SUSPECT_HARVESTS = 5
MIN_PAGES = 64


@dataclass
class _Target:
    all_accessed_streak: int = 0
    address_space: int | None = None  # Harvest.address_space of the last harvest
    flagged: set[str] = field(default_factory=set)  # reasons already logged for this target


class Sanity:
    """Per-target streaks and first-time logging; the counts live in ``stats``."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._targets: dict[int, _Target] = {}

    def check(self, h: Harvest, comm: str) -> None:
        """``comm``: the target's name as read from /proc (untrusted: exported as a label
        value as it is, escaped with ``procfs.shown`` in log lines)."""
        t = self._targets.setdefault(h.pid, _Target())
        for reason, n in h.truncations.by_reason().items():
            if n:
                self.stats.truncations[reason] += n
                self._once(t, f"truncated:{reason}", "pid %d (%s): harvest incomplete: %d %s "
                           "(counted in pageheat_walk_truncations_total)", h.pid, shown(comm), n,
                           reason)
        self.stats.unmonitored[h.pid] = (comm, h.unmonitored.nonzero())

        # An exec's first harvests find a new program that touched everything it has: no
        # sign against aging, so its streak starts again.
        if exec_between(t.address_space, h.address_space):
            t.all_accessed_streak = 0
        t.address_space = h.address_space if h.address_space is not None else t.address_space
        resident, accessed = len(h.pages), h.pages.count_accessed()
        if resident > MIN_PAGES and accessed == resident:
            t.all_accessed_streak += 1
            if t.all_accessed_streak == SUSPECT_HARVESTS:
                self._ineffective(t, h.pid, comm, "all_accessed",
                                  f"all {resident} resident pages accessed in {SUSPECT_HARVESTS} "
                                  "harvests in a row: aging clears nothing?")
        else:
            t.all_accessed_streak = 0
        if h.aging_writes > 0 and h.generations_added == 0:
            self._ineffective(t, h.pid, comm, "no_new_generation",
                              "an MGLRU aging was requested but no generation was added")

    def forget(self, pid: int) -> None:
        self._targets.pop(pid, None)
        self.stats.unmonitored.pop(pid, None)

    def _ineffective(self, t: _Target, pid: int, comm: str, reason: str, what: str) -> None:
        self.stats.aging_ineffective[reason] += 1
        self._once(t, f"aging:{reason}", "pid %d (%s): %s (counted in "
                   "pageheat_aging_ineffective_total)", pid, shown(comm), what)

    @staticmethod
    def _once(t: _Target, key: str, msg: str, *args: object) -> None:
        if key not in t.flagged:
            t.flagged.add(key)
            log.warning(msg, *args)
