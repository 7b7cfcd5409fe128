"""Unit tests for the /proc and /sys readers (procfs.py, numa.py), target selection (targets.py)
and the ground-truth workload's page sets (workload.py), all on fake trees under tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pageheat.commands.workload import PAGE, Spec, choose_sets
from pageheat.config import Targets
from pageheat.kernel import procfs
from pageheat.kernel.numa import NodeMap
from pageheat.serve import targets

# --- a fake /proc ---------------------------------------------------------------------------------


def stat_line(pid: int, comm: str, start_time: int) -> str:
    # Fields 3..52 after "(comm)"; field 22 (index 19 after the comm) is starttime.
    fields = ["S", "1", str(pid), str(pid)] + [str(100 + i) for i in range(4, 19)]
    fields += [str(start_time)] + ["0"] * 30
    assert fields[19] == str(start_time)
    return f"{pid} ({comm}) " + " ".join(fields) + "\n"


def add_process(proc: Path, pid: int, comm: str, rss_pages: int, start_time: int = 1000,
                maps: str = "", status: str | None = None) -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm[:15] + "\n")
    (d / "stat").write_text(stat_line(pid, comm[:15], start_time))
    (d / "statm").write_text(f"{rss_pages * 3} {rss_pages} 10 5 0 20 0\n")
    (d / "maps").write_text(maps)
    (d / "status").write_text(status if status is not None else
                              f"Name:\t{comm}\nTgid:\t{pid}\nVmRSS:\t{rss_pages * 4} kB\n"
                              f"RssAnon:\t{rss_pages * 2} kB\n")


MAPS = """\
55d0c8a00000-55d0c8a28000 r--p 00000000 fd:01 1573014                    /usr/bin/python3.11
55d0c9e6b000-55d0ca13f000 rw-p 00000000 00:00 0                          [heap]
7f12a4000000-7f12a4021000 rw-p 00000000 00:00 0
7f12a8000000-7f12a8200000 rw-s 00000000 00:01 2051                       /memfd:pageheat-workload (deleted)
7f12b0000000-7f12b0001000 r--p 00000000 fd:01 42                         /tmp/dir with spaces/f i l e
7ffd4e7c2000-7ffd4e7e3000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""


def test_read_maps(tmp_path: Path) -> None:
    add_process(tmp_path, 10, "python3", 5, maps=MAPS)
    maps = procfs.read_maps(10, tmp_path)
    assert len(maps) == 7
    assert maps[0] == procfs.Mapping(0x55d0c8a00000, 0x55d0c8a28000, "r--p", "/usr/bin/python3.11")
    assert maps[1].name == "[heap]" and maps[1].perms == "rw-p"
    assert maps[2] == procfs.Mapping(0x7f12a4000000, 0x7f12a4021000, "rw-p", "")
    assert maps[3].name == "/memfd:pageheat-workload (deleted)" and maps[3].perms == "rw-s"
    assert maps[4].name == "/tmp/dir with spaces/f i l e"
    assert maps[6].start == 0xffffffffff600000 and maps[6].end - maps[6].start == 4096
    assert all(m.start < m.end for m in maps)


def test_read_maps_of_a_kernel_thread_is_empty(tmp_path: Path) -> None:
    add_process(tmp_path, 2, "kthreadd", 0)
    assert procfs.read_maps(2, tmp_path) == []


@pytest.mark.parametrize("comm", ["plain", "a b c", "evil) S 1 2 (x", "((()))", ") )"])
def test_read_start_time_with_any_comm(tmp_path: Path, comm: str) -> None:
    add_process(tmp_path, 321, comm, 7, start_time=987654321)
    assert procfs.read_start_time(321, tmp_path) == 987654321
    assert procfs.read_comm(321, tmp_path) == comm


def test_read_status_kib_defaults_to_zero(tmp_path: Path) -> None:
    add_process(tmp_path, 5, "x", 10)
    got = procfs.read_status_kib(5, ("VmRSS", "RssAnon", "RssShmem"), tmp_path)
    assert got == {"VmRSS": 40, "RssAnon": 20, "RssShmem": 0}
    add_process(tmp_path, 6, "kworker/0:1", 0, status="Name:\tkworker/0:1\nState:\tI (idle)\n")
    assert procfs.read_status_kib(6, ("VmRSS",), tmp_path) == {"VmRSS": 0}


def test_rss_list_and_exists(tmp_path: Path) -> None:
    add_process(tmp_path, 5, "x", 1234)
    add_process(tmp_path, 77, "y", 1)
    (tmp_path / "self").mkdir()
    (tmp_path / "sys").mkdir()
    (tmp_path / "meminfo").write_text("")
    assert procfs.rss_pages(5, tmp_path) == 1234
    assert sorted(procfs.list_pids(tmp_path)) == [5, 77]
    assert procfs.pid_exists(77, tmp_path) and not procfs.pid_exists(78, tmp_path)


# --- targets.select ---------------------------------------------------------------------------------

MIB_PAGES = (1 << 20) // 4096


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    add_process(root, 1, "systemd", 3 * MIB_PAGES)
    add_process(root, 2, "kthreadd", 0)
    add_process(root, 3, "java", 100 * MIB_PAGES)
    add_process(root, 4, "postgres", 50 * MIB_PAGES)
    add_process(root, 5, "postgres", 1 * MIB_PAGES)
    add_process(root, 6, "redis-server", 80 * MIB_PAGES)
    add_process(root, 7, "pageheat", 500 * MIB_PAGES)  # ourselves
    add_process(root, 8, "postgres-kworker", 0)  # a kernel thread that matches the regex
    (root / "9").mkdir()  # exited between listdir and reading its files
    d = root / "10"  # exiting: stat already empty
    d.mkdir()
    (d / "stat").write_text("")
    (d / "comm").write_text("zombie\n")
    (d / "statm").write_text("")
    return root


def pids(procs: list[targets.Process]) -> list[int]:
    return [p.pid for p in procs]


def test_select_top_rss_with_min_rss_excludes_self_and_kernel_threads(proc: Path) -> None:
    got = targets.select(Targets(top_rss=3, min_rss="2MiB"), proc, self_pid=7)
    assert pids(got) == [3, 6, 4]
    assert got[0] == targets.Process(3, 1000, "java", 100 * MIB_PAGES)


def test_select_min_rss_limits_candidates(proc: Path) -> None:
    got = targets.select(Targets(top_rss=10, min_rss="60MiB"), proc, self_pid=7)
    assert pids(got) == [3, 6]


def test_min_rss_boundary_is_inclusive(proc: Path) -> None:
    got = targets.select(Targets(top_rss=10, min_rss=50 << 20), proc, self_pid=7)
    assert pids(got) == [3, 6, 4]


def test_select_comm_regex_ignores_min_rss_and_top_n(proc: Path) -> None:
    got = targets.select(Targets(comm_regex="^postgres", top_rss=0, min_rss="1GiB"), proc, self_pid=7)
    assert pids(got) == [4, 5]


def test_select_union_of_pids_regex_and_top_n_largest_first(proc: Path) -> None:
    spec = Targets(pids=[1], comm_regex="redis", top_rss=1, min_rss="2MiB")
    got = targets.select(spec, proc, self_pid=7)
    # redis (80 MiB) by regex, java (100 MiB) as the top one by RSS, systemd by pid.
    assert pids(got) == [3, 6, 1]
    assert len(set(pids(got))) == len(got)


def test_regex_matches_do_not_use_up_top_n(proc: Path) -> None:
    got = targets.select(Targets(comm_regex="java", top_rss=1, min_rss=0), proc, self_pid=7)
    assert pids(got) == [3, 6]


def test_explicit_pids_only(proc: Path) -> None:
    # top_rss 0 and no regex: exactly the pids that exist and have memory, self included if asked.
    got = targets.select(Targets(pids=[5, 7, 2, 9, 10, 4242], top_rss=0), proc, self_pid=7)
    assert pids(got) == [7, 5]


def test_self_is_never_selected_by_rss_or_regex(proc: Path) -> None:
    got = targets.select(Targets(comm_regex="pageheat", top_rss=10, min_rss=0), proc, self_pid=7)
    assert 7 not in pids(got)
    assert pids(got) == [3, 6, 4, 1, 5]


def test_process_exiting_during_selection_is_tolerated(proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = procfs.read_comm

    def vanishing(pid: int, root: Path = procfs.PROC) -> str:
        if pid == 6:
            raise ProcessLookupError(pid)
        return real(pid, root)

    monkeypatch.setattr(procfs, "read_comm", vanishing)
    got = targets.select(Targets(top_rss=10, min_rss=0), proc, self_pid=7)
    assert pids(got) == [3, 4, 1, 5]


# --- NUMA node map ----------------------------------------------------------------------------------


def fake_sysfs(root: Path, block_bytes: int, nodes: dict[int, list[int]]) -> Path:
    mem = root / "devices/system/memory"
    mem.mkdir(parents=True)
    (mem / "block_size_bytes").write_text(f"{block_bytes:x}\n")
    nd = root / "devices/system/node"
    nd.mkdir(parents=True)
    (nd / "possible").write_text("0-1\n")
    for nid, blocks in nodes.items():
        d = nd / f"node{nid}"
        d.mkdir()
        (d / "cpulist").write_text("0\n")
        (d / "memory_side_cache").mkdir()
        for b in blocks:
            (mem / f"memory{b}").mkdir(exist_ok=True)
            (d / f"memory{b}").symlink_to(mem / f"memory{b}")
    return root


def ref_node(pfn: int, block_pages: int, nodes: dict[int, list[int]]) -> int:
    for nid, blocks in nodes.items():
        if pfn // block_pages in blocks:
            return nid
    return -1


def test_node_map_from_sysfs_with_holes(tmp_path: Path) -> None:
    block = 128 << 20  # "8000000" in hex
    layout = {0: [0, 1, 2, 3], 1: [8, 9, 12], 2: [10]}
    sysfs = fake_sysfs(tmp_path, block, layout)
    m = NodeMap.from_sysfs(sysfs)
    bp = block >> 12
    assert sorted(m.nodes) == [0, 1, 2] and m.single is None
    assert m.max_pfn == 13 * bp
    probe = [0, 1, bp - 1, bp, 4 * bp - 1, 4 * bp, 7 * bp + 5, 8 * bp, 10 * bp, 11 * bp - 1, 11 * bp,
             12 * bp + 3, 13 * bp, 1 << 40]
    got = m.node_of(np.array(probe, np.uint64))
    assert got.dtype == np.int16
    assert got.tolist() == [ref_node(p, bp, layout) for p in probe]
    assert got.tolist().count(-1) == 5


def test_node_map_ranges_are_sorted_and_disjoint(tmp_path: Path) -> None:
    m = NodeMap.from_sysfs(fake_sysfs(tmp_path, 1 << 27, {0: [5, 0, 3], 1: [1, 4]}))
    assert np.all(m.start[1:] >= m.end[:-1])
    assert m.node.tolist() == [0, 1, 0, 1, 0]


def test_single_node_needs_no_lookup(tmp_path: Path) -> None:
    m = NodeMap.from_sysfs(fake_sysfs(tmp_path, 1 << 27, {0: [0, 1]}))
    assert m.single == 0
    assert m.node_of(np.array([0, 5, 1 << 20], np.uint64)).tolist() == [0, 0, 0]


def test_no_numa_means_everything_is_node_zero(tmp_path: Path) -> None:
    mem = tmp_path / "devices/system/memory"
    mem.mkdir(parents=True)
    (mem / "block_size_bytes").write_text("8000000\n")
    m = NodeMap.from_sysfs(tmp_path)
    assert m.nodes == (0,) and m.single == 0 and m.max_pfn == 0
    assert m.node_of(np.array([0, 12345], np.uint64)).tolist() == [0, 0]


# --- workload page sets --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["random", "contiguous"])
@pytest.mark.parametrize(("hot", "warm"), [(0.1, 0.1), (0.25, 0.5), (0.0, 0.3), (0.33, 0.0)])
def test_choose_sets_disjoint_sorted_and_sized(layout: str, hot: float, warm: float) -> None:
    spec = Spec(size=4 << 20, hot=hot, warm=warm, layout=layout, seed=3)
    n = spec.size // PAGE
    h, w = choose_sets(spec)
    assert len(h) == int(n * hot) and len(w) == int(n * warm)
    assert len(np.intersect1d(h, w)) == 0
    for s in (h, w):
        assert np.all(np.diff(s) > 0)
        assert s.size == 0 or (s.min() >= 0 and s.max() < n)


def test_contiguous_hot_set_is_one_band_in_the_middle() -> None:
    spec = Spec(size=8 << 20, hot=0.2, warm=0.1, layout="contiguous")
    n = spec.size // PAGE
    h, _ = choose_sets(spec)
    assert np.all(np.diff(h) == 1)
    mid = (int(h[0]) + int(h[-1])) / 2
    assert abs(mid - n / 2) <= 1


def test_choose_sets_is_deterministic_per_seed() -> None:
    a = choose_sets(Spec(size=2 << 20, seed=5))
    b = choose_sets(Spec(size=2 << 20, seed=5))
    c = choose_sets(Spec(size=2 << 20, seed=6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


# --- untrusted bytes (issue 11, kind 1) -----------------------------------------------------------

# Bytes str.splitlines() ends a line at, and bytes that are not UTF-8, inside names.
LINE_BREAKERS = [b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\r", b"\xc2\x85", b"\xe2\x80\xa8",
                 b"\xe2\x80\xa9"]


def maps_line(start: int, end: int, name: bytes) -> bytes:
    head = f"{start:x}-{end:x} rw-s 00000000 fd:01 42 ".encode()
    return head + (b" " * max(73 - len(head), 1) + name if name else b"") + b"\n"


@pytest.mark.kind1
@pytest.mark.parametrize("breaker", LINE_BREAKERS)
def test_only_newline_ends_a_maps_line(tmp_path: Path, breaker: bytes) -> None:
    names = [b"/tmp/a" + breaker + b"b", b"", b"/tmp/x" + breaker + b"0-1 r--p" + breaker,
             b"/srv/bad\xe5\x90utf8 (deleted)", b"/tmp/sp ace) (x", b"/tmp/new\\012line"]
    data = b"".join(maps_line(0x1000 * (2 * i + 1), 0x1000 * (2 * i + 2), n) for i, n in enumerate(names))
    assert len(data.decode("utf-8", "replace").splitlines()) > len(names)  # the old way broke
    add_process(tmp_path, 10, "x", 1)
    (tmp_path / "10" / "maps").write_bytes(data)
    got = procfs.read_maps(10, tmp_path)
    assert [m.name for m in got] == [n.decode("utf-8", "replace") for n in names]
    assert [m.start for m in got] == [0x1000 * (2 * i + 1) for i in range(len(names))]
    assert all(m.perms == "rw-s" for m in got)


@pytest.mark.kind1
@pytest.mark.parametrize("raw", [b"job-\xe5\x90", b"a\nb", b"trail\n", b"\xff\xfe", b"x) S 1 (y",
                                 b"sp ace", b"\x1b[2J\x0c"])
def test_comm_and_stat_with_any_bytes(tmp_path: Path, raw: bytes) -> None:
    d = tmp_path / "42"
    d.mkdir()
    (d / "comm").write_bytes(raw + b"\n")  # fs/proc/base.c comm_show: raw, one newline added
    stat_tail = " ".join(["S", "1", "42", "42"] + [str(100 + i) for i in range(4, 19)]
                         + ["777"] + ["0"] * 30)
    (d / "stat").write_bytes(b"42 (" + raw + b") " + stat_tail.encode() + b"\n")
    (d / "status").write_bytes(b"Name:\t" + raw.replace(b"\n", b"\\n") + b"\nTgid:\t42\nVmPTE:\t8 kB\n")
    comm = procfs.read_comm(42, tmp_path)
    assert comm == raw.decode("utf-8", "replace")
    st = procfs.read_stat(42, tmp_path)
    assert (st.state, st.ppid, st.start_time) == ("S", 1, 777)
    assert procfs.read_tgid(42, tmp_path) == 42
    assert procfs.read_status_kib(42, ("VmPTE",), tmp_path) == {"VmPTE": 8}
    shown = procfs.shown(comm)
    assert shown.isprintable() and "\n" not in shown and "\x1b" not in shown


@pytest.mark.kind1
def test_comm_regex_matches_a_name_that_is_not_utf8(proc: Path) -> None:
    add_process(proc, 11, "x", 5 * MIB_PAGES)
    (proc / "11" / "comm").write_bytes(b"job-\xe5\x90\n")
    got = targets.select(Targets(comm_regex="^job-", top_rss=0), proc, self_pid=7)
    assert pids(got) == [11] and got[0].comm == "job-\ufffd"


@pytest.mark.kind1
def test_shown_escapes_what_breaks_a_line_or_drives_a_terminal() -> None:
    assert procfs.shown("plain name (deleted)") == "plain name (deleted)"
    assert procfs.shown("a\nb\x0c\x1c\x85\u2028\x1b[2Jz\ufffd") == \
        "a\\x0ab\\x0c\\x1c\\x85\\u2028\\x1b[2Jz\ufffd"


# --- which process (issue 11, kind 4) -------------------------------------------------------------


@pytest.mark.kind4
def test_explicit_thread_id_stands_for_its_process_and_reused_pids_are_not_taken(proc: Path) -> None:
    (proc / "3" / "task").mkdir()
    add_process(proc / "3" / "task", 33, "java-worker", 100 * MIB_PAGES)
    (proc / "33").symlink_to(proc / "3" / "task" / "33")  # /proc/TID works, unlisted or not
    ((proc / "33") / "status").write_text("Name:\tjava-worker\nTgid:\t3\n")
    got = targets.select(Targets(pids=[33], top_rss=0), proc, self_pid=7)
    assert pids(got) == [3]
    assert targets.resolve(33, proc) == (3, "pid 33 is a thread of process 3 (java): following "
                                            "process 3")
    # pid 4 was given when it named a process that started at tick 999: not the one there now.
    assert pids(targets.select(Targets(pids=[4], top_rss=0), proc, pinned={4: 999})) == []
    assert pids(targets.select(Targets(pids=[4], top_rss=0), proc, pinned={4: 1000})) == [4]


@pytest.mark.kind4
def test_resolve_refuses_kernel_threads_zombies_and_missing_pids(proc: Path) -> None:
    kd = proc / "2" / "stat"
    kd.write_text(kd.read_text().replace(" 106 ", f" {procfs.PF_KTHREAD | 0x40} ", 1))  # flags
    with pytest.raises(targets.PidError, match="pid 2 is a kernel thread"):
        targets.resolve(2, proc)
    z = proc / "5" / "stat"
    z.write_text(z.read_text().replace(") S ", ") Z ", 1))
    with pytest.raises(targets.PidError, match=r"process 5 \(postgres\) has exited"):
        targets.resolve(5, proc)
    with pytest.raises(targets.PidError, match="no such process: 4242"):
        targets.resolve(4242, proc)
    assert targets.resolve(4, proc) == (4, None)


@pytest.mark.kind3
def test_task_dir_of_a_zombie_leader_is_a_live_thread(proc: Path) -> None:
    z = proc / "6" / "stat"
    z.write_text(z.read_text().replace(") S ", ") Z ", 1))
    (proc / "6" / "statm").write_text("0 0 0 0 0 0 0\n")
    (proc / "6" / "maps").write_text("")
    add_process(proc / "6" / "task", 6, "redis-server", 0)
    add_process(proc / "6" / "task", 60, "redis-server", 80 * MIB_PAGES, maps=MAPS)
    assert procfs.task_dir(6, proc) == proc / "6" / "task" / "60"
    assert procfs.rss_pages(6, proc) == 80 * MIB_PAGES
    assert len(procfs.read_maps(6, proc)) == 7
    assert procfs.task_dir(4, proc) == proc / "4"  # a live leader is read directly


@pytest.mark.kind1
def test_render_draws_names_as_they_are(tmp_path: Path) -> None:
    """A comm or file name with ``$...$`` is mathtext to matplotlib (and ``$\\x$`` made it raise);
    control characters would reach the terminal."""
    from pageheat.commands import render
    from PIL import Image

    rows = ["#0 $\\x$ (deleted)", "#1 a\x1b[2Jb"]
    heat = render.Matrix(np.arange(4.0), rows, np.arange(8.0).reshape(2, 4))
    idle = render.Matrix(np.arange(4.0), ["0-1 s"], np.ones((1, 4)))
    data = render.Data(1, "job-$\\x$\x0c", heat, idle, 4.0)
    out = tmp_path / "x.png"
    render.draw(data, out)
    assert Image.open(out).size == (render.FIGSIZE[0] * render.DPI, render.FIGSIZE[1] * render.DPI)
    text = render.terminal(render.Data(1, procfs.shown(data.comm), heat, idle, 4.0), color=False)
    assert "\x0c" not in text and "job-$\\x$\\x0c" in text


@pytest.mark.kind3
def test_is_running_is_false_from_the_moment_a_process_begins_to_exit(proc: Path) -> None:
    """An exiting process leaves the selection (its rss drops to 0) while /proc/PID still reads:
    serve must say it exited, not that it is no longer selected (kernel/exit.c: do_exit() sets
    PF_EXITING, then drops the mm, then the task is a zombie until reaped)."""
    assert procfs.is_running(4, 1000, proc)
    assert not procfs.is_running(4, 999, proc)  # the pid now names another process
    assert not procfs.is_running(4242, 1000, proc)  # gone
    assert not procfs.is_running(10, 1000, proc)  # stat already empty
    s = proc / "4" / "stat"
    s.write_text(s.read_text().replace(" 106 ", f" {106 | procfs.PF_EXITING} ", 1))
    assert not procfs.is_running(4, 1000, proc)
    z = proc / "5" / "stat"
    z.write_text(z.read_text().replace(") S ", ") Z ", 1))
    assert not procfs.is_running(5, 1000, proc)
    add_process(proc / "5" / "task", 5, "postgres", 0)
    add_process(proc / "5" / "task", 50, "postgres", 1)  # a zombie leader with a live thread
    assert procfs.is_running(5, 1000, proc)


@pytest.mark.kind1
def test_maps_table_is_read_maps_as_columns(tmp_path: Path) -> None:
    names = [b"/usr/lib/x.so", b"", b"/tmp/a\x0cb", b"[heap]", b"/usr/lib/x.so", b"bad\xe5\x90"]
    data = b"".join(maps_line(0x1000 * (2 * i + 1), 0x1000 * (2 * i + 2), n) for i, n in enumerate(names))
    add_process(tmp_path, 10, "x", 1)
    (tmp_path / "10" / "maps").write_bytes(data)
    rows = procfs.read_maps(10, tmp_path)
    table = procfs.read_maps_table(10, tmp_path)
    assert len(table) == len(rows) == len(names)
    assert table.start.dtype == table.end.dtype == np.uint64
    columns = zip(table.start.tolist(), table.end.tolist(), table.perms, table.names, strict=True)
    assert list(columns) == [(m.start, m.end, m.perms, m.name) for m in rows]
    assert table.names[0] is table.names[4]  # equal names are one str
    assert procfs.count_maps(10, tmp_path) == len(names)
    assert len(procfs.parse_maps_table(b"")) == 0
