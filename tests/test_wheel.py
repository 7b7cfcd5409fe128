"""The wheel: built from this checkout, it carries the compiled BPF objects, and installed into a
fresh venv on a host without clang, `pageheat doctor` and `pageheat snapshot` work.

"Without clang" is enforced, not assumed: the installed pageheat runs in a private mount
namespace (``unshare --mount``) where /usr/lib/llvm-* (clang, llc, llvm-strip: /usr/bin only
has symlinks into it) is an empty tmpfs and bpftool is /dev/null, with PATH = the venv's bin
plus /usr/bin and /bin; a check inside the namespace first proves that no clang, llc or bpftool
can be found or run. The venv is Debian's /usr/bin/python3 (what a clean Debian 12 host has),
without any extra, and runs from a temporary directory: nothing comes from this checkout.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, scan_matrix, truth_sets

SYSTEM_PYTHON = "/usr/bin/python3"
BUILD_TOOLS = ("clang", "clang-14", "llc", "llvm-strip", "bpftool")
# Runs inside the namespace before the command: hide every LLVM install and bpftool.
HIDE_TOOLS = r"""
set -e
for d in /usr/lib/llvm-*; do [ -d "$d" ] && mount -t tmpfs -o ro,size=4k none "$d"; done
for t in /usr/sbin/bpftool /usr/bin/bpftool; do [ -e "$t" ] && mount --bind /dev/null "$t"; done
exec "$@"
"""


def without_build_tools(cmd: list[str]) -> list[str]:
    """``cmd`` run in a private mount namespace where clang, llc, llvm-strip and bpftool are
    gone (see the module docstring)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("unshare is not installed (util-linux)")
    return [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", HIDE_TOOLS, "sh", *cmd]


def head() -> str:
    """The checkout's commit, what the wheel's pageheat_build_info{revision} must say."""
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


def clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PAGEHEAT_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin:/usr/sbin:/sbin"
    return env


def build_wheel(src: Path, out: Path, env: dict[str, str] | None = None,
                wrap=lambda c: c) -> subprocess.CompletedProcess:
    return subprocess.run(wrap([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                                "-w", str(out)]),
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = build_wheel(ROOT, out)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("pageheat-*.whl")
    return whl


def test_wheel_carries_bpf_objects_licence_and_extras(wheel):
    sources = sorted(p.name.removesuffix(".c") for p in (ROOT / "bpf").glob("*.bpf.c"))
    assert sources
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for s in sources:
            obj = f"pageheat/bpf/{s}.o"
            assert obj in names, f"{obj} not in {wheel.name}"
            data = z.read(obj)
            assert data[:4] == b"\x7fELF" and data[18] == 247, f"{obj} is not a BPF ELF object"  # EM_BPF
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(info).decode())
        licence = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
        assert "GNU GENERAL PUBLIC LICENSE" in z.read(licence).decode()
        # setup.py's build hook records the commit; the checkout's tree has no REVISION file.
        assert z.read("pageheat/REVISION").decode().strip() == head()
    assert not (ROOT / "exporter" / "REVISION").exists()
    assert meta["License-Expression"] == "GPL-2.0-only"
    requires = meta.get_all("Requires-Dist")
    unconditional = {r.split(">")[0].split("=")[0].strip().lower() for r in requires if "extra ==" not in r}
    assert {"numpy", "uvloop", "prometheus-client"} <= unconditional
    assert not {"textual", "matplotlib"} & unconditional, "textual/matplotlib must be extras"
    assert {"top", "render", "all"} <= set(meta.get_all("Provides-Extra"))


def test_build_without_objects_or_clang_fails_clearly(tmp_path):
    """A checkout without compiled objects, on a host without clang: one clear line, no wheel."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, text=True,
                           check=True).stdout.split()
    src = tmp_path / "src"
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    assert not list((src / "exporter" / "bpf").glob("*.o"))
    env = {**os.environ, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    r = build_wheel(src, tmp_path / "out", env=env, wrap=without_build_tools)
    assert r.returncode != 0
    assert "BPF objects missing or out of date" in r.stdout + r.stderr
    assert "bash bpf/build.sh" in r.stdout + r.stderr
    assert not list((tmp_path / "out").glob("*.whl"))


@pytest.mark.kernel
def test_wheel_in_fresh_venv_without_clang(ptwalk_ok, wheel, workload, tmp_path):
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} is missing (apt-get install python3-venv)")
    venv = tmp_path / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
    env = clean_env(venv)
    r = subprocess.run([venv / "bin/pip", "install", "-q", str(wheel)], capture_output=True,
                       text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr

    def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(without_build_tools(list(cmd)), capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=tmp_path)

    # The namespace really has no build tools, and the package is the venv's, not this checkout.
    probe = run(str(venv / "bin/python"), "-c", (
        "import shutil, subprocess, sys, pageheat\n"
        f"tools = {BUILD_TOOLS!r}\n"
        "found = [t for t in tools if shutil.which(t)]\n"
        "ran = [t for t in ('/usr/bin/clang', '/usr/bin/clang-14', '/usr/bin/llc') "
        "if subprocess.run(['sh', '-c', t + ' --version'], capture_output=True).returncode == 0]\n"
        "print(pageheat.__file__); sys.exit(1 if found or ran else 0)"))
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert probe.stdout.strip().startswith(str(venv)), probe.stdout

    # pageheat_build_info{revision} of the installed wheel: the commit it was built from, with
    # no checkout to ask (it runs from the venv, in a temporary directory).
    r = run(str(venv / "bin/python"), "-c",
            "from pageheat import buildinfo; print(buildinfo.labels('ptwalk')['revision'])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == head()

    r = run(str(venv / "bin/pageheat"), "doctor", "--json")
    assert r.returncode == 0, r.stderr
    doctor = json.loads(r.stdout)
    assert doctor["auto"] == "ptwalk", doctor

    t = workload("--size", "32MiB", "--hot", "0.25", "--warm", "0.05")
    r = run(str(venv / "bin/pageheat"), "snapshot", "--source", "ptwalk", "--pid", str(t.pid),
            "--scans", "3", "--aging", "300ms", "--range", t.range_arg, "--pages", "--json")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    assert snap["scans"] == 3 and not snap["exited"]
    pages = {(int(p["addr"], 16) - t.start) // 4096: p for p in snap["pages"]}
    # The same zero-error truth as tests/test_ptwalk_accuracy.py, from the installed wheel.
    m = scan_matrix(t, pages, 3)
    assert (m >= 0).all(), "a resident page of the workload was not reported"
    hot, cold = truth_sets(t, pages)
    assert len(hot) and (m[hot] == 1).all(), "a hot page was missed"
    assert len(cold) and (m[cold] == 0).all(), "a never-touched page was reported accessed"

    # top and render name the extra they need, in one line, exit 2.
    r = run(str(venv / "bin/pageheat"), "top", "--pid", str(t.pid))
    assert (r.returncode, r.stderr.strip()) == (
        2, "pageheat top needs the 'top' extra: pip install 'pageheat[top]'")
    r = run(str(venv / "bin/pageheat"), "render", "--prometheus", "http://127.0.0.1:9",
            "--pid", str(t.pid), "--png", str(tmp_path / "x.png"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "pip install 'pageheat[render]'" in r.stderr
