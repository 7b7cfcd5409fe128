"""The harvest worker thread runs at SCHED_IDLE by default, and only that thread."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from pageheat.serve.daemon import worker_priority


def _policy_of_worker(priority: str) -> tuple[int, int]:
    with ThreadPoolExecutor(1, initializer=worker_priority, initargs=(priority,)) as ex:
        return ex.submit(lambda: (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))).result()


def test_idle_worker_is_sched_idle_and_caller_is_not() -> None:
    before = os.sched_getscheduler(0)
    policy, _ = _policy_of_worker("idle")
    assert policy == os.SCHED_IDLE
    assert os.sched_getscheduler(0) == before  # per thread: the event loop keeps its policy


def test_normal_worker_keeps_the_callers_policy() -> None:
    policy, nice = _policy_of_worker("normal")
    assert (policy, nice) == (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
