"""`pageheat top` end to end in a real terminal: tmux runs it on the ground-truth workload with
the real ptwalk source; the pane's escape codes say which rows are hot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PAGEHEAT, run_pageheat

pytestmark = pytest.mark.kernel
SGR = re.compile(r"\x1b\[([0-9;:]*)m")
ROW = re.compile(r"^([0-9a-f]{12}) ")


def _cells(line: str) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """(fg, bg) of every upper-half-block cell in a line captured with ``capture-pane -e``."""
    fg = bg = (0, 0, 0)
    out = []
    pos = 0
    for m in SGR.finditer(line + "\x1b[m"):
        out.extend((fg, bg) for ch in line[pos:m.start()] if ch == "\u2580")
        pos = m.end()
        params = [int(p) if p else 0 for p in re.split("[;:]", m.group(1))] if m.group(1) else [0]
        i = 0
        while i < len(params):
            p = params[i]
            if p == 0:
                fg = bg = (0, 0, 0)
            elif p in (38, 48) and i + 4 < len(params) and params[i + 1] == 2:
                rgb = tuple(params[i + 2:i + 5])
                fg, bg = (rgb, bg) if p == 38 else (fg, rgb)
                i += 4
            elif p in (38, 48) and i + 2 < len(params) and params[i + 1] == 5:
                raise AssertionError("256-colour cell: tmux should pass 24-bit colour through")
            i += 1
    return out


def _lum(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


class Tmux:
    def __init__(self, tmp: Path) -> None:
        self.sock = f"pageheat-top-{os.getpid()}-{time.monotonic_ns()}"

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux(tmp_path: Path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (apt-get install tmux)")
    t = Tmux(tmp_path)
    yield t
    t.kill()


def test_top_headless_points_to_snapshot() -> None:
    r = run_pageheat("top", "--pid", str(os.getpid()), timeout=30)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "snapshot" in lines[0] and r.stdout == ""


def test_top_in_tmux_shows_the_hot_band_and_quits(ptwalk_ok, tmux: Tmux, tmp_path: Path) -> None:
    truth_file, rc_file = tmp_path / "truth.json", tmp_path / "rc"
    top = " ".join([*PAGEHEAT, "top", "--", sys.executable, "-m", "pageheat", "workload", "--truth",
                    str(truth_file), "--layout", "contiguous", "--hot", "0.2", "--warm", "0"])
    # The pane stays open after top exits, so the terminal state can be checked.
    env = "env -u COLUMNS -u LINES COLORTERM=truecolor TERM=xterm-256color"
    tmux("-f", "/dev/null", "new-session", "-d", "-x", "200", "-y", "50",
         f"{env} {top}; echo $? > {rc_file}; sleep 60")
    deadline = time.monotonic() + 60
    while not truth_file.exists():
        assert time.monotonic() < deadline, tmux("capture-pane", "-p")
        time.sleep(0.1)
    truth = json.loads(truth_file.read_text())
    start = int(truth["start"], 16)
    hot_lo, hot_hi = start + truth["hot"][0] * 4096, start + (truth["hot"][-1] + 1) * 4096
    time.sleep(8)  # a few 1.5 s columns after the workload populated its region
    screen = tmux("capture-pane", "-p", "-e").splitlines()
    (tmp_path / "screen.txt").write_text("\n".join(screen))
    assert any("source ptwalk" in SGR.sub("", line) for line in screen), "\n".join(screen)

    rows = []  # (address of the row, next row's address, mean luminance of the newest columns)
    for line in screen:
        m = ROW.match(SGR.sub("", line))
        cells = _cells(line)
        if m and cells:
            newest = cells[-3:]
            rows.append([int(m.group(1), 16), 0,
                         sum(_lum(fg) + _lum(bg) for fg, bg in newest) / (2 * len(newest))])
    for a, b in zip(rows, rows[1:], strict=False):
        a[1] = b[0]
    hot = [lum for lo, hi, lum in rows if hi and lo >= hot_lo and hi <= hot_hi]
    cold = [lum for lo, hi, lum in rows if hi and lo >= start and hi <= start + truth["size"]
            and (hi <= hot_lo or lo >= hot_hi)]
    assert len(hot) >= 3 and len(cold) >= 3, rows
    assert min(hot) > max(cold) + 40, (hot, cold)

    pid = truth["pid"]
    t0 = time.monotonic()
    tmux("send-keys", "q")
    while not rc_file.exists():
        assert time.monotonic() - t0 < 2.0, "q did not exit within 2 s"
        time.sleep(0.02)
    quit_s = time.monotonic() - t0
    assert rc_file.read_text().strip() == "0"
    state = tmux("display", "-p", "#{alternate_on} #{cursor_flag} #{mouse_any_flag} #{keypad_cursor_flag}")
    assert state.split() == ["0", "1", "0", "0"], state  # main screen, cursor shown, no mouse/keypad modes
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists():  # the launched command was stopped
        assert time.monotonic() < deadline, "workload still running"
        time.sleep(0.05)
    print(f"\nq -> exit in {quit_s * 1000:.0f} ms; hot rows {min(hot):.0f}+, cold rows <= {max(cold):.0f}")


def test_top_sigterm_restores_terminal_and_256_colours(ptwalk_ok, tmux: Tmux, tmp_path: Path) -> None:
    """Without COLORTERM the heatmap falls back to 256 colours; SIGTERM quits like q."""
    truth_file, rc_file, pid_file = tmp_path / "truth.json", tmp_path / "rc", tmp_path / "pid"
    top = " ".join([*PAGEHEAT, "top", "--aging", "200ms", "--", sys.executable, "-m", "pageheat", "workload",
                    "--truth", str(truth_file), "--size", "32MiB"])
    inner = f"echo $$ > {pid_file}; exec env -u COLUMNS -u LINES -u COLORTERM TERM=xterm-256color {top}"
    tmux("-f", "/dev/null", "new-session", "-d", "-x", "160", "-y", "40",
         f"sh -c '{inner}'; echo $? > {rc_file}; sleep 60")
    deadline = time.monotonic() + 60
    while True:
        screen = tmux("capture-pane", "-p", "-e")
        # the heatmap can be drawn before the workload has written its truth file
        if "\u2580" in screen and "source ptwalk" in SGR.sub("", screen) and truth_file.exists():
            break
        assert time.monotonic() < deadline, screen
        time.sleep(0.2)
    truth = json.loads(truth_file.read_text())
    codes = {m.group(1) for m in SGR.finditer(screen)}
    assert any(c.startswith(("38;5;", "48;5;")) or ";38;5;" in c for c in codes), codes
    assert not any("38;2;" in c or "48;2;" in c for c in codes)
    top_pid = int(pid_file.read_text())
    t0 = time.monotonic()
    os.kill(top_pid, 15)
    while not rc_file.exists():
        assert time.monotonic() - t0 < 3.0, "SIGTERM did not stop top"
        time.sleep(0.02)
    assert rc_file.read_text().strip() == "0"
    state = tmux("display", "-p", "#{alternate_on} #{cursor_flag} #{mouse_any_flag} #{keypad_cursor_flag}")
    assert state.split() == ["0", "1", "0", "0"], state
    deadline = time.monotonic() + 5
    while Path(f"/proc/{truth['pid']}").exists():
        assert time.monotonic() < deadline, "workload still running"
        time.sleep(0.05)


@pytest.mark.parametrize("command", ["/nonexistent/cmd", "pageheat-no-such-command", "."])
def test_top_of_a_missing_command_says_what_serve_says(tmux: Tmux, tmp_path: Path,
                                                       command: str) -> None:
    """In a terminal (where top would start) and without one: serve's line and exit 2, before
    any source is loaded."""
    said = run_pageheat("serve", "--", command, timeout=30)
    assert said.returncode == 2
    [serve_line] = said.stderr.strip().splitlines()
    assert serve_line == f"pageheat: cannot run {command}: no such executable"

    r = run_pageheat("top", "--", command, timeout=30)
    assert (r.returncode, r.stderr.strip().splitlines()) == (2, [serve_line])

    err, rc = tmp_path / "stderr", tmp_path / "rc"
    tmux("-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "30",
         f"{' '.join(PAGEHEAT)} top -- {command} 2> {err}; echo $? > {rc}; sleep 60")
    deadline = time.monotonic() + 30
    while not rc.exists() or not rc.read_text().strip():
        assert time.monotonic() < deadline, tmux("capture-pane", "-p")
        time.sleep(0.05)
    assert rc.read_text().strip() == "2"
    assert err.read_text().strip().splitlines() == [serve_line]
