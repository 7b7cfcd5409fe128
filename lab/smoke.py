"""Smoke test of the lab: ``python3 -m lab.smoke [--kernel NAME ...]``.

Boots each lab kernel (deb-6.12 with two NUMA nodes, deb-6.1 with one) and, in
the guest, prints and asserts what the project's BPF/MGLRU code relies on:
uname, MGLRU enabled, /sys/kernel/debug/lru_gen readable and parseable (memcg
id, nodes, generations, MAX_GEN), NUMA node count, cgroup v2, ``numactl
--membind=1`` (2-node guest), a child memcg showing up in lru_gen, that an
aging write (``+ MEMCG NODE MAX_GEN 1 1``) adds a generation, and that
fentry/fexit (bpftrace ``kfunc``/``kretfunc`` on ptep_test_and_clear_young) see
events while MGLRU ages a workload.

The same module runs inside the guest as ``python3 -m lab.smoke guest``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

LRU_GEN = Path("/sys/kernel/debug/lru_gen")
CGROUP = Path("/sys/fs/cgroup")
PROBE_FN = "ptep_test_and_clear_young"


# --------------------------------------------------------------------------- guest side


@dataclass
class Lruvec:
    """One (memcg, node) block of /sys/kernel/debug/lru_gen."""

    memcg_id: int
    memcg_path: str
    node: int
    gens: list[tuple[int, int, int, int]] = field(default_factory=list)  # gen, age_ms, anon, file

    @property
    def max_gen(self) -> int:
        return max(g[0] for g in self.gens)


_MEMCG = re.compile(r"^memcg\s+(\d+)\s*(\S*)\s*$")
_NODE = re.compile(r"^\s*node\s+(\d+)\s*$")
_GEN = re.compile(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


def parse_lru_gen(text: str) -> list[Lruvec]:
    """Parse lru_gen (the short form; the per-tier lines of lru_gen_full are skipped)."""
    out: list[Lruvec] = []
    memcg: tuple[int, str] | None = None
    for line in text.splitlines():
        if m := _MEMCG.match(line):
            memcg = (int(m[1]), m[2])
        elif (m := _NODE.match(line)) and memcg is not None:
            out.append(Lruvec(memcg[0], memcg[1], int(m[1])))
        elif (m := _GEN.match(line)) and out:
            out[-1].gens.append((int(m[1]), int(m[2]), int(m[3]), int(m[4])))
    return out


def check(cond: bool, what: str) -> None:
    print(f"  [{'ok' if cond else 'FAIL'}] {what}", flush=True)
    if not cond:
        raise SystemExit(f"smoke failed: {what}")


def age(memcg_id: int, node: int) -> tuple[int, int]:
    """Run one MGLRU aging step; returns (max_gen before, after)."""
    vec = next(v for v in parse_lru_gen(LRU_GEN.read_text()) if (v.memcg_id, v.node) == (memcg_id, node))
    before = vec.max_gen
    LRU_GEN.write_text(f"+ {memcg_id} {node} {before} 1 1\n")
    vec = next(v for v in parse_lru_gen(LRU_GEN.read_text()) if (v.memcg_id, v.node) == (memcg_id, node))
    return before, vec.max_gen


WORKLOAD = (
    "import time, sys\n"
    "b = bytearray(64 << 20)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    for i in range(0, len(b), 4096): b[i] = 1\n"
    "    time.sleep(0.05)\n"
)


def guest() -> int:
    """Checks run inside the VM (root, through lab/guest-init.sh)."""
    expect_nodes = int(os.environ.get("PAGEHEAT_LAB_EXPECT_NODES", "1"))
    print(f"uname -r: {os.uname().release}")
    print(f"THP: {Path('/sys/kernel/mm/transparent_hugepage/enabled').read_text().strip()}")
    enabled = Path("/sys/kernel/mm/lru_gen/enabled").read_text().strip()
    print(f"lru_gen/enabled: {enabled}")
    check(int(enabled, 16) & 1 == 1, "MGLRU enabled")

    text = LRU_GEN.read_text()
    print("lru_gen (first lines):\n" + "\n".join("    " + line for line in text.splitlines()[:14]))
    vecs = parse_lru_gen(text)
    check(bool(vecs) and all(v.gens for v in vecs), "lru_gen parses into memcg/node/generations")
    for v in vecs:
        gens = [g[0] for g in v.gens]
        print(f"    memcg {v.memcg_id} {v.memcg_path!r} node {v.node}: gens {gens} MAX_GEN {v.max_gen}")

    nodes = sorted(p.name for p in Path("/sys/devices/system/node").glob("node[0-9]*"))
    print(f"nodes: {nodes}")
    check(len(nodes) == expect_nodes, f"{expect_nodes} NUMA node(s)")
    check(
        {v.node for v in vecs if v.memcg_id == vecs[0].memcg_id} == set(range(len(nodes))),
        "lru_gen lists every node",
    )

    mounts = Path("/proc/mounts").read_text()
    check(f" {CGROUP} cgroup2 " in mounts, "cgroup v2 at /sys/fs/cgroup")
    check(
        " /sys/fs/bpf bpf " in mounts and " /sys/kernel/debug debugfs " in mounts, "bpffs and debugfs mounted"
    )

    if expect_nodes >= 2:
        probe = "b = bytearray(32 << 20); print(open('/proc/self/numa_maps').read())"
        r = subprocess.run(
            ["numactl", "--membind=1", sys.executable, "-c", probe], capture_output=True, text=True
        )
        # Only anonymous mappings count: shared-library pages were cached on node 0 before.
        anon = "\n".join(ln for ln in r.stdout.splitlines() if "anon=" in ln and "file=" not in ln)
        n0 = sum(int(x) for x in re.findall(r"\bN0=(\d+)", anon))
        n1 = sum(int(x) for x in re.findall(r"\bN1=(\d+)", anon))
        print(f"numactl --membind=1: rc {r.returncode}, anon pages N0={n0} N1={n1} {r.stderr.strip()}")
        check(r.returncode == 0 and n1 > 8000 and n0 == 0, "numactl --membind=1 puts memory on node 1")

    # A child memcg so the memcg id <-> cgroup path mapping is exercised.
    cg = CGROUP / "pageheat-smoke"
    (CGROUP / "cgroup.subtree_control").write_text("+memory")
    cg.mkdir(exist_ok=True)
    # Join the cgroup before exec, so all the workload's pages are charged to the child memcg
    # (on v2, pages faulted before a move stay charged to the old memcg).
    join = f'echo $$ > {cg / "cgroup.procs"} && exec "$0" -c "$1"'
    wl = subprocess.Popen(["sh", "-c", join, sys.executable, WORKLOAD], stdout=subprocess.PIPE, text=True)
    try:
        assert wl.stdout is not None
        wl.stdout.readline()  # 'ready': the 64 MiB are faulted in
        vecs = parse_lru_gen(LRU_GEN.read_text())
        mine = [v for v in vecs if v.memcg_path == "/pageheat-smoke"]
        print(f"child memcg: {[(v.memcg_id, v.node) for v in mine]}")
        check(bool(mine), "child cgroup appears in lru_gen with its own memcg id")

        # bpftrace prints "Attaching N probes..." *before* attaching (under TCG the attach then
        # takes seconds and early events are lost); BEGIN fires once everything is attached.
        # Events are split by whose page table it is: the workload's, or anyone else's.
        owner = "args->vma->vm_mm->owner->pid"
        prog = (
            'BEGIN { printf("READY\\n"); } '
            f"kfunc:{PROBE_FN} /{owner} == {wl.pid}/ {{ @workload_pte = count(); }} "
            f"kfunc:{PROBE_FN} /{owner} != {wl.pid}/ {{ @other_pte = count(); }} "
            f"kretfunc:{PROBE_FN} {{ @young[retval] = count(); }} "
            f"kfunc:pmdp_test_and_clear_young /{owner} == {wl.pid}/ {{ @workload_pmd = count(); }}"
        )
        bt = subprocess.Popen(
            ["bpftrace", "-e", prog], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert bt.stdout is not None
        t0 = time.monotonic()
        head = []
        for line in bt.stdout:
            head.append(line.strip())
            if line.strip() == "READY" or len(head) > 20:
                break
        print(f"bpftrace: {head} after {time.monotonic() - t0:.1f} s")
        check(head[-1:] == ["READY"], "bpftrace attached kfunc/kretfunc probes")
        root_id = vecs[0].memcg_id
        # The workload's memcg first: its first aging must see all 64 MiB young.
        for v in sorted(vecs, key=lambda v: v.memcg_id != mine[0].memcg_id):
            if v.memcg_id == root_id or v.memcg_path == "/pageheat-smoke":
                b, a = age(v.memcg_id, v.node)
                print(f"    aged memcg {v.memcg_id} node {v.node}: MAX_GEN {b} -> {a}")
                check(a == b + 1, "aging write adds a generation")
        # Informational: how the kernel treats odd arguments (recorded in lab/README.md).
        for label, gen_delta, fourth in (
            ("stale MAX_GEN (0)", None, 1),
            ("MAX_GEN+1", 1, 1),
            ("4th field 200", 0, 200),
            ("4th field 201", 0, 201),
            ("4th field 0", 0, 0),
        ):
            cur = next(v for v in parse_lru_gen(LRU_GEN.read_text()) if (v.memcg_id, v.node) == (root_id, 0))
            gen = 0 if gen_delta is None else cur.max_gen + gen_delta
            try:
                LRU_GEN.write_text(f"+ {root_id} 0 {gen} {fourth} 1\n")
                outcome = "accepted"
            except OSError as exc:
                outcome = f"rejected ({exc.strerror})"
            after = next(
                v for v in parse_lru_gen(LRU_GEN.read_text()) if (v.memcg_id, v.node) == (root_id, 0)
            )
            print(f"    aging with {label}: {outcome}, MAX_GEN {cur.max_gen} -> {after.max_gen}")
        time.sleep(1)
        wl.kill()
        t0 = time.monotonic()
        bt.send_signal(signal.SIGINT)
        out = bt.communicate(timeout=300)[0]
        print(f"bpftrace: exited {time.monotonic() - t0:.1f} s after SIGINT (detach)")
        print("bpftrace output:\n" + "\n".join("    " + ln for ln in out.splitlines() if ln.strip()))
        counts = {m[0]: int(m[1]) for m in re.findall(r"^@(\w+): (\d+)", out, re.M)}
        young = sum(int(x) for x in re.findall(r"^@young\[\d+\]: (\d+)", out, re.M))
        check(young > 0, f"fexit (kretfunc) on {PROBE_FN} fired ({young} returns)")
        # 64 MiB = 16384 base pages, all touched since they were faulted in (THP is madvise).
        wl_pte = counts.get("workload_pte", 0)
        check(wl_pte >= 16384, f"fentry saw the workload's young PTEs when its memcg aged ({wl_pte})")
    finally:
        wl.kill()
        wl.wait()
    print("SMOKE OK")
    return 0


# --------------------------------------------------------------------------- host side

PLANS: dict[str, dict[str, object]] = {
    "deb-6.12": {"numa": ["1G,cpus=0", "1G,cpus=1"], "nodes": 2},
    "deb-6.1": {"numa": None, "nodes": 1},
}


def host(names: list[str], timeout: float) -> int:
    """Boot each kernel once and run the guest checks; print boot times."""
    from lab.vm import run_in_vm  # host-only import

    root = Path(__file__).resolve().parent.parent
    failed = []
    for name in names:
        plan = PLANS.get(name, {"numa": None, "nodes": 1})
        print(f"=== {name} ===", flush=True)
        r = run_in_vm(
            name,
            [sys.executable, "-m", "lab.smoke", "guest"],
            numa=plan["numa"],  # type: ignore[arg-type]
            env={"PAGEHEAT_LAB_EXPECT_NODES": str(plan["nodes"])},
            cwd=root,
            timeout=timeout,
        )
        print(r.output)
        print(
            f"--- {name}: rc {r.returncode}, boot {r.boot_seconds} s, wall {r.wall_seconds} s"
            f"{' (TIMED OUT)' if r.timed_out else ''}",
            flush=True,
        )
        if r.returncode != 0 or "SMOKE OK" not in r.stdout:
            failed.append(name)
    print("smoke: " + (f"FAILED {failed}" if failed else "all kernels OK"))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m lab.smoke", description=__doc__.split("\n")[0])
    p.add_argument("mode", nargs="?", choices=["host", "guest"], default="host")
    p.add_argument("--kernel", action="append", help="kernel name (repeatable; default: deb-6.12, deb-6.1)")
    p.add_argument("--timeout", type=float, default=600)
    a = p.parse_args(argv)
    if a.mode == "guest":
        return guest()
    return host(a.kernel or list(PLANS), a.timeout)


if __name__ == "__main__":
    sys.exit(main())
