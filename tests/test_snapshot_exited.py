"""`pageheat snapshot` of a process that is gone when the source attaches: the snapshot says
so (exited, no scans), built by commands/snapshot.py like every other snapshot."""

from __future__ import annotations

import json
import subprocess
import sys


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
