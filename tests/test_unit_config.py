"""Unit tests for exporter/config.py: durations, sizes, validation and load()."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pageheat.config import DEFAULT_PORT, Config, Targets, load, parse_duration, parse_size
from pydantic import ValidationError


@pytest.fixture(autouse=True)
def _no_pageheat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.upper().startswith("PAGEHEAT_"):
            monkeypatch.delenv(k)


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("1s", 1.0), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), (".25s", 0.25),
    ("3", 3.0), (" 10 ms ", 0.01), (7, 7.0), (0.2, 0.2),
])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1d", "-1s", "1.2.3s", "1 sec", "one", "1S", "1e3"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [
    ("4096", 4096), ("64MiB", 64 << 20), ("1G", 1 << 30), ("1GiB", 1 << 30), ("2k", 2048),
    ("3KB", 3 << 10), ("1t", 1 << 40), (" 5 MiB ", 5 << 20), (12345, 12345), ("7b", 7),
])
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5G", "-1", "64XiB", "MiB", "1 GiBs"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_defaults() -> None:
    c = Config()
    assert c.listen == f"0.0.0.0:{DEFAULT_PORT}"
    assert c.host_port == ("0.0.0.0", DEFAULT_PORT)
    assert c.aging == 1.0 and c.bins == 32 and c.expose_addresses is False
    assert c.targets.top_rss == 5 and c.targets.min_rss == 64 << 20 and c.targets.pids == []


def test_durations_and_sizes_are_parsed_in_the_model() -> None:
    c = Config(aging="250ms", cold_after="2m", targets={"min_rss": "1GiB"})
    assert c.aging == pytest.approx(0.25)
    assert c.cold_after == pytest.approx(120.0)
    assert c.targets.min_rss == 1 << 30


@pytest.mark.parametrize(("aging", "ok"), [("100ms", True), (0.1, True), ("99ms", False), (0.05, False)])
def test_aging_at_least_100ms(aging: object, ok: bool) -> None:
    if ok:
        assert Config(aging=aging).aging == pytest.approx(0.1)
    else:
        with pytest.raises(ValidationError, match="aging"):
            Config(aging=aging)


@pytest.mark.parametrize(("bins", "ok"), [(1, False), (2, True), (1024, True), (1025, False)])
def test_bins_between_2_and_1024(bins: int, ok: bool) -> None:
    if ok:
        assert Config(bins=bins).bins == bins
    else:
        with pytest.raises(ValidationError, match="bins"):
            Config(bins=bins)


def test_extra_fields_are_forbidden_at_top_level_and_in_targets() -> None:
    with pytest.raises(ValidationError, match="agign"):
        Config(agign="1s")
    with pytest.raises(ValidationError, match="pid"):
        Config(targets={"pid": [1]})


@pytest.mark.parametrize(("listen", "host_port"), [
    ("127.0.0.1:9000", ("127.0.0.1", 9000)),
    (":9100", ("0.0.0.0", 9100)),
    ("[::1]:8080", ("::1", 8080)),
    ("localhost:65535", ("localhost", 65535)),
    ("host:1", ("host", 1)),
])
def test_listen_host_port(listen: str, host_port: tuple[str, int]) -> None:
    assert Config(listen=listen).host_port == host_port


@pytest.mark.parametrize("listen", ["localhost", "host:", "host:0", "host:65536", "host:http", "host:-1"])
def test_listen_rejects(listen: str) -> None:
    with pytest.raises(ValidationError, match="HOST:PORT"):
        Config(listen=listen)


def test_comm_regex_must_compile() -> None:
    assert Targets(comm_regex="^java$").comm_regex == "^java$"
    with pytest.raises(ValidationError, match="bad regular expression"):
        Targets(comm_regex="(unclosed")


def test_targets_reject_non_positive_pids_and_negative_top_rss() -> None:
    with pytest.raises(ValidationError):
        Targets(pids=[0])
    with pytest.raises(ValidationError):
        Targets(top_rss=-1)


def test_other_ranges() -> None:
    for bad in ({"cpu_budget": 0}, {"cpu_budget": 65}, {"max_series": 99}, {"cold_after": 0},
                {"discovery_interval": "50ms"}, {"never_accessed_mappings": -1}, {"source": "nope"}):
        with pytest.raises(ValidationError):
            Config(**bad)


def test_load_without_file_uses_overrides(tmp_path: Path) -> None:
    c = load(None, {"listen": "127.0.0.1:1234", "aging": "2s"})
    assert c.host_port == ("127.0.0.1", 1234) and c.aging == 2.0


def test_load_file_then_overrides_on_top(tmp_path: Path) -> None:
    f = tmp_path / "pageheat.yml"
    f.write_text("aging: 500ms\nbins: 16\ntargets:\n  comm_regex: '^postgres'\n  min_rss: 1MiB\n")
    c = load(f, {"aging": "3s"})
    assert c.aging == 3.0 and c.bins == 16
    assert c.targets.comm_regex == "^postgres" and c.targets.min_rss == 1 << 20
    assert c.targets.top_rss == 5


def test_load_pid_override_sets_top_rss_to_zero_and_keeps_other_target_fields(tmp_path: Path) -> None:
    f = tmp_path / "pageheat.yml"
    f.write_text("targets:\n  top_rss: 9\n  pids: [7]\n  min_rss: 4KiB\n")
    c = load(f, {"pids": [11, 12]})
    assert c.targets.pids == [11, 12]
    assert c.targets.top_rss == 0
    assert c.targets.min_rss == 4096
    assert load(None, {"pids": [3]}).targets.top_rss == 0


def test_load_empty_file_is_defaults(tmp_path: Path) -> None:
    f = tmp_path / "empty.yml"
    f.write_text("")
    assert load(f, {}) == Config()


def test_load_rejects_a_non_mapping(tmp_path: Path) -> None:
    f = tmp_path / "list.yml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected a YAML mapping"):
        load(f, {})


def test_load_bad_value_names_the_field(tmp_path: Path) -> None:
    f = tmp_path / "bad.yml"
    f.write_text("bins: 5000\n")
    with pytest.raises(ValidationError, match="bins"):
        load(f, {})


def test_load_missing_file_is_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load(tmp_path / "nope.yml", {})


def test_environment_is_below_file_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEHEAT_BINS", "64")
    monkeypatch.setenv("PAGEHEAT_AGING", "5s")
    assert load(None, {}).bins == 64
    f = tmp_path / "c.yml"
    f.write_text("bins: 16\n")
    c = load(f, {"aging": "200ms"})
    assert c.bins == 16
    assert c.aging == pytest.approx(0.2)
