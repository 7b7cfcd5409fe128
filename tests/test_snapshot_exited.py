"""`pageheat snapshot` of a process that is gone when the source attaches: the snapshot says
so (exited, no scans), built by commands/snapshot.py like every other snapshot; one stopped by
a signal prints the scans it made; a range it cannot use is refused before any scan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import PAGEHEAT, run_pageheat


def test_snapshot_of_a_process_gone_before_attach(ptwalk_ok) -> None:
    from pageheat.commands.snapshot import take
    from pageheat.sources.ptwalk import PtwalkSource

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: /proc/PID is gone, as for a process that exits after the pid check
    src = PtwalkSource()
    try:
        snap = take(src, gone.pid, 0.7, 3)
    finally:
        src.close()
    assert snap == {"pid": gone.pid, "source": src.name, "aging_ms": 0.7 * 1000, "scans": 0,
                    "harvest_ms": [], "aging_cost_ms": [], "exited": True, "vmas": []}
    assert json.loads(json.dumps(snap)) == snap


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_snapshot_stopped_by_a_signal_prints_the_scans_it_made(ptwalk_ok, workload, sig) -> None:
    """Ctrl-C or a TERM in the middle: the scans made so far, ``interrupted`` true, exit 128+N."""
    t = workload("--size", "16MiB", "--hot", "0.5")
    proc = subprocess.Popen([*PAGEHEAT, "snapshot", "--pid", str(t.pid), "--scans", "50", "--aging", "200ms"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)  # start-up, then a few scans
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    snap = json.loads(out)
    assert snap["interrupted"] and not snap["exited"] and 1 <= snap["scans"] < 50
    assert len(snap["harvest_ms"]) == snap["scans"]
    hot = max(snap["vmas"], key=lambda v: v["resident"])  # the workload's 16 MiB
    assert all(len(v["accessed"]) == snap["scans"] for v in snap["vmas"])
    assert hot["resident"] == 16 << 20 >> 12


def test_snapshot_range_beyond_64_bits_is_a_usage_error() -> None:
    r = run_pageheat("snapshot", "--pid", str(os.getpid()), "--scans", "1", "--pages", "--range",
                     "0-100000000000000000000")
    assert r.returncode == 2 and "below 2^64" in r.stderr and "Traceback" not in r.stderr
