"""Unit tests for exporter/model/identity.py (kubelet cgroup names, globs) and exporter/model/fleet.py."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from pageheat.kernel import cgroups
from pageheat.model import identity
from pageheat.model.aggregate import IDLE_BOUNDS
from pageheat.model.fleet import by_cgroup
from test_unit_collector import make_view

UID = str(uuid.UUID("8dd7e4f3-4b8a-4c1e-9f6a-2d5b3c7e1a90"))
CID = "4f2a" + "0123456789abcdef" * 3 + "c0ffee123456"  # 64 hex digits
assert len(CID) == 64


def systemd(qos: str, runtime: str) -> str:
    pod = UID.replace("-", "_")
    if qos == "guaranteed":
        return f"/kubepods.slice/kubepods-pod{pod}.slice/{runtime}-{CID}.scope"
    return (f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{pod}.slice/"
            f"{runtime}-{CID}.scope")


def cgroupfs(qos: str) -> str:
    return f"/kubepods/pod{UID}/{CID}" if qos == "guaranteed" else f"/kubepods/{qos}/pod{UID}/{CID}"


CONTAINERS = [systemd(q, r) for q in ("burstable", "besteffort", "guaranteed")
              for r in ("cri-containerd", "crio", "docker")] + \
             [cgroupfs(q) for q in ("burstable", "besteffort", "guaranteed")]


@pytest.mark.parametrize("path", CONTAINERS)
def test_kubelet_container_paths(path: str) -> None:
    assert identity.kubelet_ids(path) == (CID, UID)
    ident = identity.identity(path)
    assert (ident.cgroup, ident.container_id, ident.pod_uid) == (path, CID, UID)


@pytest.mark.parametrize("path,want", [
    # the pod's own cgroup (its processes, e.g. a pause container without its own scope)
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice",
     ("", UID)),
    (f"/kubepods/besteffort/pod{UID}", ("", UID)),
    (f"/kubepods/besteffort/pod{UID}/crio-{CID}", (CID, UID)),  # CRI-O, cgroupfs driver
    (f"/kubepods/besteffort/pod{UID}/crio-conmon-{CID}", ("", UID)),  # its monitor, not it
    # a container path under a v1 hierarchy mounted below a container's root (docker in docker)
    (f"/docker/{CID}/kubepods/burstable/pod{UID}/{CID}", (CID, UID)),
    # read in a pod's own cgroup namespace (cgroup v2 nodes): relative to that pod's cgroup
    (f"/../../kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope", (CID, UID)),
    (f"/../../../besteffort/pod{UID}/{CID}", (CID, UID)),
    ("/../../system.slice/memcached.service", ("", "")),
    # not containers
    ("/", ("", "")),
    ("/system.slice/memcached.service", ("", "")),
    ("/user.slice/user-1000.slice/session-3.scope", ("", "")),
    (f"/system.slice/docker-{CID}.scope", ("", "")),  # plain docker, no pod: no pod_uid, no id
    (f"/pod{UID}/{CID}", ("", "")),  # not under kubepods
    ("/kubepods.slice/kubepods-burstable.slice", ("", "")),
    (f"/kubepods/burstable/pod{UID}/{CID[:-1]}", ("", UID)),  # 63 digits: not an id
    ("/process_api/48d867647869a5963d3df5690e689177", ("", "")),
])
def test_kubelet_other_paths(path: str, want: tuple[str, str]) -> None:
    assert identity.kubelet_ids(path) == want


def test_cgroup_of_prefers_memory_controller_on_v1() -> None:
    v1 = "12:memory:/kubepods/x\n11:cpu,cpuacct:/other\n0::/unified\n"
    assert cgroups.cgroup_of(v1) == "/kubepods/x"
    assert cgroups.cgroup_of("0::/system.slice/a.service\n") == "/system.slice/a.service"
    assert cgroups.cgroup_of("garbage\n") == ""


@pytest.mark.parametrize("pattern,path,want", [
    ("/kubepods.slice/**", "/kubepods.slice/a/b/c.scope", True),
    ("/kubepods.slice/**", "/kubepods.slice", True),  # the subtree, including its root
    ("/kubepods.slice/**", "/kubepods.slicex/a", False),
    ("/kubepods/*/pod*/*", f"/kubepods/burstable/pod{UID}/{CID}", True),
    ("/kubepods/*/pod*/*", f"/kubepods/pod{UID}/{CID}", False),  # * stays in one component
    ("/**/cri-containerd-*.scope", systemd("burstable", "cri-containerd"), True),
    ("/**/cri-containerd-*.scope", systemd("burstable", "crio"), False),
    ("/system.slice/memcached.service", "/system.slice/memcached.service", True),
    ("/system.slice/memcached.service", "/system.slice/memcached.service/x", False),
    ("/system.slice/mem?ached.service", "/system.slice/memcached.service", True),
    ("/system.slice/[!m]*", "/system.slice/memcached.service", False),
    ("/a.b", "/a_b", False),  # . is literal
    ("/a[[]1]", "/a[1]", True),  # [ inside a class is literal (and re warns of nothing)
    ("/a[[]1]", "/a1]", False),
    ("/x[&|~]y", "/x&y", True),
    ("/x[\\]", "/x\\", True),
])
def test_glob(pattern: str, path: str, want: bool) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a FutureWarning from re went to stderr, not the log
        assert identity.matches(path, [pattern]) is want


def test_glob_unclosed_bracket() -> None:
    with pytest.raises(ValueError, match="unclosed"):
        identity.glob_regex("/a/[bc")


@pytest.mark.parametrize("pattern", ["/kubepods/[z-a]", "/x[!]"])
def test_glob_bad_character_class_is_a_value_error(pattern: str) -> None:
    with pytest.raises(ValueError, match="bad cgroup pattern"):
        identity.glob_regex(pattern)


@pytest.mark.kind1
def test_cgroup_name_not_utf8_stays_a_valid_label(tmp_path, caplog) -> None:
    """A cgroup is a directory and may be named with any bytes: its path must still make a
    valid exposition (UTF-8), and the scrape must not fail."""
    from pageheat.config import Config
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    raw = b"/job-\xe5\x90"  # a name cut inside a multi-byte character
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_bytes(b"4:memory:" + raw + b"\n0::/\n")
    path = cgroups.read_cgroup(42, tmp_path)
    assert path == "/job-\\xe5\\x90"
    # Two cgroups whose names differ only in invalid bytes stay two (U+FFFD merged them).
    (tmp_path / "43").mkdir()
    (tmp_path / "43" / "cgroup").write_bytes(b"4:memory:/job-\x90\xe5\n")
    assert cgroups.read_cgroup(43, tmp_path) != path
    views = {42: make_view(42, rss=100, seed=1)}
    ids = {42: identity.identity(path)}
    from pageheat.serve.collector import PageheatCollector
    from pageheat.serve.stats import Stats

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PageheatCollector(Config(), lambda: views, Stats(), "ptwalk",
                                        identities=lambda: ids))
    text = generate_latest(registry).decode("utf-8")
    labels = {s.labels["cgroup"] for f in text_string_to_metric_families(text) for s in f.samples
              if "cgroup" in s.labels}
    assert labels == {path}


def test_by_cgroup_sums_views_of_a_cgroup() -> None:
    views = [make_view(p, rss=100 * p, seed=p) for p in (1, 2, 3, 4)]
    ids = {1: identity.identity("/a"), 2: identity.identity("/a"), 3: identity.identity("/b"),
           4: identity.Identity()}  # cgroup unknown: in no cgroup
    groups = {g.cgroup: g for g in by_cgroup(views, ids)}
    assert set(groups) == {"/a", "/b"}
    a = groups["/a"]
    assert sorted(a.pids) == [1, 2]
    for row, combo in enumerate(views[0].combos):
        np.testing.assert_array_equal(a.idle[combo], views[0].idle[row] + views[1].idle[row])
    want_resident = int(views[0].idle.sum() + views[1].idle.sum())
    assert a.resident_pages == want_resident
    for w in (60.0, 300.0):
        upto = IDLE_BOUNDS.index(w) + 1
        assert a.working_set_pages(w) == int(views[0].idle[:, :upto].sum() + views[1].idle[:, :upto].sum())
    with pytest.raises(ValueError):
        a.working_set_pages(90.0)


# -- config ---------------------------------------------------------------------------------
def test_targets_all_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pageheat import config

    for k in list(__import__("os").environ):
        if k.upper().startswith("PAGEHEAT_") and k.upper() not in config.NOT_SETTINGS:
            monkeypatch.delenv(k)
    monkeypatch.setenv("PAGEHEAT_TARGETS__ALL", "true")
    monkeypatch.setenv("PAGEHEAT_TARGETS__CGROUPS", '["/kubepods.slice/**"]')
    cfg = config.from_env()
    assert cfg.targets.all is True
    assert cfg.targets.cgroups == ["/kubepods.slice/**"]
    # --pid names exactly the processes to follow: no all, no cgroups
    cfg = config.load(None, {"pids": [1]})
    assert (cfg.targets.all, cfg.targets.cgroups, cfg.targets.pids) == (False, [], [1])


@pytest.mark.parametrize("data,msg", [
    ({"targets": {"cgroups": ["kubepods/*"]}}, "must start with /"),
    ({"targets": {"cgroups": ["/kubepods/"]}}, "ends with / and would match nothing: /kubepods for"),
    ({"targets": {"cgroups": ["/a/[b"]}}, "unclosed"),
    ({"targets": {"cgroups": ["/a/[z-a]"]}}, "bad cgroup pattern"),
    ({"targets": {"all": "maybe"}}, "targets.all"),
    ({"working_set_windows": ["90s"]}, "not one of the idle-age bounds"),
    ({"per_process_series_top": -1}, "per_process_series_top"),
])
def test_bad_fleet_config_is_one_line(tmp_path, data: dict, msg: str) -> None:
    import yaml
    from pageheat import config
    from pydantic import ValidationError

    f = tmp_path / "c.yml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ValidationError) as e:
        config.load(f, {})
    line = config.describe(e.value)
    assert msg in line and "\n" not in line


def test_working_set_windows_parse() -> None:
    from pageheat import config

    cfg = config.Config(working_set_windows=["5m", "1m", "60s"])
    assert cfg.working_set_windows == [60.0, 300.0]


# -- collector: info metric, cgroup families, per_process_series_top --------------------------
def scrape_fleet(cfg, views: dict, ids: dict):
    from pageheat.serve.collector import PageheatCollector
    from pageheat.serve.stats import Stats
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    stats = Stats()
    reg = CollectorRegistry()
    reg.register(PageheatCollector(cfg, lambda: views, stats, "fake", identities=lambda: ids))
    text = generate_latest(reg).decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples], stats


def test_collector_fleet_families() -> None:
    from pageheat.config import Config
    from pageheat.sources.base import PAGE_TYPE_NAMES

    pod = systemd("burstable", "cri-containerd")
    views = {p: make_view(p, rss=1000 - p, seed=p) for p in (11, 12, 13)}
    ids = {11: identity.identity(pod), 12: identity.identity(pod), 13: identity.identity("/x")}
    cfg = Config(per_process_series_top=1)
    got, stats = scrape_fleet(cfg, views, ids)
    info = {s.labels["pid"]: s.labels for s in got if s.name == "pageheat_process_info"}
    assert info["11"] == {"pid": "11", "comm": "proc11", "cgroup": pod, "container_id": CID,
                          "pod_uid": UID}
    assert info["13"]["container_id"] == info["13"]["pod_uid"] == ""
    # per-process page series only for the largest (pid 11), the rest counted
    assert {s.labels["pid"] for s in got if s.name == "pageheat_process_resident_pages"} == {"11"}
    assert [s.value for s in got if s.name == "pageheat_targets_aggregated_only"] == [2]
    # cgroup resident bytes: the sum of its processes' pages, per (node, type)
    for row, (node, ptype) in enumerate(views[11].combos):
        want = 4096 * int(views[11].idle[row].sum() + views[12].idle[row].sum())
        [s] = [s for s in got if s.name == "pageheat_cgroup_resident_bytes" and s.labels ==
               {"cgroup": pod, "node": str(node), "type": PAGE_TYPE_NAMES[ptype]}]
        assert s.value == want
        inf = [s for s in got if s.name == "pageheat_cgroup_idle_bytes_bucket" and s.labels["cgroup"] == pod
               and s.labels["type"] == PAGE_TYPE_NAMES[ptype] and s.labels["le"] == "+Inf"]
        assert [s.value for s in inf] == [want]
    ws = {s.labels["window"]: s.value for s in got
          if s.name == "pageheat_cgroup_working_set_bytes" and s.labels["cgroup"] == pod}
    upto = IDLE_BOUNDS.index(300.0) + 1
    assert ws["5m"] == 4096 * int(views[11].idle[:, :upto].sum() + views[12].idle[:, :upto].sum())
    assert set(ws) == {"1m", "5m"}
    # the last process of a cgroup gone: its series gone at the next scrape
    del views[13]
    del ids[13]
    got, _ = scrape_fleet(cfg, views, ids)
    assert not [s for s in got if s.name.startswith("pageheat_cgroup_") and s.labels.get("cgroup") == "/x"]
    assert [s for s in got if s.name.startswith("pageheat_cgroup_") and s.labels.get("cgroup") == pod]


def test_collector_fleet_max_series_counts_what_it_drops() -> None:
    from pageheat.config import Config
    from pageheat.serve.collector import SELF_SERIES

    views = {p: make_view(p, rss=1000 - p, seed=p) for p in range(1, 41)}
    ids = {p: identity.identity(f"/c{p}") for p in views}
    cfg = Config(max_series=400)
    got, stats = scrape_fleet(cfg, views, ids)
    kept = {s.labels["cgroup"] for s in got if s.name == "pageheat_cgroup_resident_bytes"}
    [dropped] = [s.value for s in got if s.name == "pageheat_cgroups_dropped"]
    assert 0 < len(kept) < 40 and len(kept) + dropped == 40
    largest = sorted(views, key=lambda p: -int(views[p].idle.sum()))[:len(kept)]
    assert kept == {f"/c{p}" for p in largest}  # the largest kept
    page_series = [s for s in got if s.name.startswith(("pageheat_cgroup_", "pageheat_process_info"))
                   or s.labels.get("pid")]
    assert len(page_series) <= 400 - SELF_SERIES
    assert stats.series_exported <= 400 - SELF_SERIES and stats.series_dropped > 0


def with_promoted(v, counts: np.ndarray):
    """A view carrying the per-page cost issue's promotion counts ([combo, bucket])."""
    object.__setattr__(v, "promoted", counts.astype(np.uint64))
    return v


def test_promoted_ledger_stays_monotonic_under_churn() -> None:
    from pageheat.model.fleet import PromotedLedger

    ledger = PromotedLedger()
    ones = np.ones((2, len(IDLE_BOUNDS)), dtype=np.uint64)
    ids = {1: identity.identity("/a"), 2: identity.identity("/a"), 3: identity.identity("/b")}
    v1, v2, v3 = (with_promoted(make_view(p, 10, seed=p), ones * p) for p in (1, 2, 3))
    t = ledger.totals([v1, v2, v3], ids, ["/a", "/b"])
    np.testing.assert_array_equal(t["/a"], (1 + 2) * 2 * np.ones(len(IDLE_BOUNDS)))
    # pid 1 exits: /a keeps its counts; pid 2 counts on
    v2b = with_promoted(make_view(2, 10, seed=2), ones * 5)
    t2 = ledger.totals([v2b, v3], ids, ["/a", "/b"])
    np.testing.assert_array_equal(t2["/a"], (1 + 5) * 2 * np.ones(len(IDLE_BOUNDS)))
    assert (t2["/a"] >= t["/a"]).all()
    # pid 2 reused by a new process (its count starts again): still monotonic
    v2c = with_promoted(make_view(2, 10, seed=2), ones * 0)
    t3 = ledger.totals([v2c, v3], ids, ["/a", "/b"])
    assert (t3["/a"] >= t2["/a"]).all()
    # /b's last process gone, /b gone: its total is forgotten, a new /b starts from its own
    t4 = ledger.totals([v2c], ids, ["/a"])
    assert "/b" not in t4
    v4 = with_promoted(make_view(4, 10, seed=4), ones)
    t5 = ledger.totals([v2c, v4], {**ids, 4: identity.identity("/b")}, ["/a", "/b"])
    np.testing.assert_array_equal(t5["/b"], 2 * np.ones(len(IDLE_BOUNDS)))


def test_collector_cgroup_promoted_bytes() -> None:
    from pageheat.config import Config

    ones = np.ones((2, len(IDLE_BOUNDS)), dtype=np.uint64)
    views = {p: with_promoted(make_view(p, 10, seed=p), ones * p) for p in (1, 2)}
    ids = {1: identity.identity("/a"), 2: identity.identity("/a")}
    got, _ = scrape_fleet(Config(), views, ids)
    prom = {s.labels["le"]: s.value for s in got if s.name == "pageheat_cgroup_promoted_bytes_bucket"}
    assert prom["+Inf"] == 4096 * 2 * (1 + 2) * len(IDLE_BOUNDS)
    assert prom["1.0"] == 4096 * 2 * (1 + 2)


def test_once_per_frame_takes_the_youngest_mapping() -> None:
    from pageheat.model.fleet import PageFrames

    v1, v2 = make_view(1, 10, seed=1), make_view(2, 10, seed=2)
    ids = {1: identity.identity("/a"), 2: identity.identity("/a")}
    nan = np.nan
    # frame 10 shared: idle 500 s in pid 1, 3 s in pid 2 -> once, 3 s; frame 11 shared, never
    # accessed by either -> once, +Inf; 12 and 13 private.
    f1 = PageFrames(np.array([10, 11, 12], np.uint64), np.zeros(3, np.int32), np.array([500.0, nan, 0.5]))
    f2 = PageFrames(np.array([13, 11, 10], np.uint64), np.zeros(3, np.int32), np.array([40.0, nan, 3.0]))
    [g] = by_cgroup([v1, v2], ids, {1: f1, 2: f2})
    assert g.deduplicated and g.resident_pages == 4
    want = np.zeros(len(IDLE_BOUNDS), np.int64)
    for age in (3.0, 0.5, 40.0):
        want[np.searchsorted(IDLE_BOUNDS, age)] += 1
    want[-1] += 1  # frame 11, never accessed
    np.testing.assert_array_equal(g.idle[(0, 0)], want)
    assert g.idle_seconds[(0, 0)] == 43.5
    assert g.working_set_pages(5.0) == 2
    # one process without frames: the plain sum of the views
    [g] = by_cgroup([v1, v2], ids, {1: f1})
    assert not g.deduplicated and g.resident_pages == int(v1.idle.sum() + v2.idle.sum())
