"""`pageheat doctor`: for each source, can it run on this kernel, and if not, why not.

The sources and their checks come from the registry (``pageheat.sources.SOURCES``, checks in
``pageheat.sources.checks``); this module orders and prints them."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict

from pageheat.kernel import procfs
from pageheat.sources import AUTO_ORDER, DEFAULT_OPTIONS, PLANNED, SOURCES, SourceOptions
from pageheat.sources.checks import Verdict


def verdicts(options: SourceOptions = DEFAULT_OPTIONS) -> list[Verdict]:
    """In --source auto's order of preference, then the sources not written yet;
    ``options``: the Config's, as serve would open the source with."""
    out = [SOURCES[name].check(options) for name in AUTO_ORDER]
    return out + [Verdict(name, False, "not implemented yet") for name in PLANNED]


def run(as_json: bool = False, options: SourceOptions = DEFAULT_OPTIONS) -> int:
    """Exit 1 when no source can run, or when pageheat is not in the host PID namespace (then
    every source would load, and follow nothing: see procfs.pid_namespace_problem)."""
    vs = verdicts(options)
    usable = [v.source for v in vs if v.ok]
    namespace = procfs.pid_namespace_problem()
    cgroupns = procfs.cgroup_namespace_problem()  # a warning: serve still works, its labels are off
    if as_json:
        json.dump({"kernel": platform.release(), "sources": [asdict(v) for v in vs],
                   "auto": usable[0] if usable and not namespace else None,
                   "pid_namespace": {"ok": namespace is None, "detail": namespace or "host"},
                   "cgroup_namespace": {"ok": cgroupns is None, "detail": cgroupns or "host"}},
                  sys.stdout)
        print()
    else:
        print(f"pageheat doctor: kernel {platform.release()} ({platform.machine()})")
        for v in vs:
            print(f"  {v.source:<12} {'yes' if v.ok else 'no ':<4} {v.detail}")
        if cgroupns:
            print(f"warning: {cgroupns}")
        if namespace:
            print(f"--source auto picks: nothing: {namespace}")
        else:
            print(f"--source auto picks: {usable[0] if usable else 'nothing: no source can run'}")
    return 0 if usable and not namespace else 1
