"""Unit tests for exporter/config.py: durations, sizes, validation and load()."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from pageheat.config import (
    DEFAULT_PORT,
    MAX_DURATION,
    NOT_SETTINGS,
    Config,
    ConfigError,
    Targets,
    check_environment,
    describe,
    from_env,
    load,
    parse_duration,
    parse_size,
    read_yaml,
    setting_names,
)
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


@pytest.mark.parametrize("listen", ["localhost", "host:", "host:0", "host:65536", "host:http", "host:-1",
                                    "::1:80", "x y:80", "a..b:1", "-a:1", "host:\u0663"])
def test_listen_rejects(listen: str) -> None:
    with pytest.raises(ValidationError, match="HOST:PORT"):
        Config(listen=listen)


@pytest.mark.parametrize("listen", ["[::1]:19480:80", "[::1:80", "[nothex]:1", "[]:1"])
def test_listen_rejects_a_bad_bracketed_address(listen: str) -> None:
    with pytest.raises(ValidationError, match=r"\[IPv6\]:PORT"):
        Config(listen=listen)


def test_listen_takes_an_ipv6_zone_and_refuses_one_address_twice() -> None:
    assert Config(listen="[fe80::1%eth0]:80").host_port == ("fe80::1%eth0", 80)
    with pytest.raises(ValidationError, match="listed twice"):
        Config(listen=["127.0.0.1:1", "[::1]:2", "127.0.0.1:1"])
    with pytest.raises(ValidationError, match="listed twice"):
        Config(listen=[":3", "0.0.0.0:3"])  # the same address, spelt two ways


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


@pytest.mark.kind5
def test_precedence_flags_over_environment_over_file_over_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yml"
    f.write_text("bins: 16\naging: 2s\ncold_after: 5m\ntargets: {comm_regex: '^db', min_rss: 1MiB}\n")
    monkeypatch.setenv("PAGEHEAT_BINS", "64")
    monkeypatch.setenv("PAGEHEAT_AGING", "5s")
    monkeypatch.setenv("PAGEHEAT_TARGETS__TOP_RSS", "3")
    c = load(f, {"aging": "200ms"})
    assert c.aging == pytest.approx(0.2)  # flag over environment and file
    assert c.bins == 64  # environment over file
    assert c.cold_after == 300.0  # file over default
    assert c.discovery_interval == Config.model_fields["discovery_interval"].default  # default
    # Nested: the environment's top_rss is merged into the file's targets, not replacing them.
    assert (c.targets.top_rss, c.targets.comm_regex, c.targets.min_rss) == (3, "^db", 1 << 20)


@pytest.mark.kind5
def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEHEAT_TARGETS__TOP_RSS", "3")
    monkeypatch.setenv("PAGEHEAT_TARGETS__MIN_RSS", "1GiB")
    monkeypatch.setenv("PAGEHEAT_TARGETS__PIDS", "[7, 8]")
    t = from_env().targets
    assert (t.top_rss, t.min_rss, t.pids) == (3, 1 << 30, [7, 8])
    assert from_env().targets_configured
    monkeypatch.setenv("PAGEHEAT_TARGETS__TOP_RSS", "-1")
    with pytest.raises(ValidationError, match="targets.top_rss"):
        from_env()


def test_targets_configured_only_when_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not load(None, {}).targets_configured
    assert not load(None, {"aging": "1s"}).targets_configured
    assert load(None, {"pids": [1]}).targets_configured
    f = tmp_path / "c.yml"
    f.write_text("targets: {top_rss: 5}\n")  # the default value, but written down: explicit
    assert load(f, {}).targets_configured


@pytest.mark.kind5
@pytest.mark.parametrize("name", ["PAGEHEAT_AGEING", "PAGEHEAT_TARGET__TOP_RSS", "PAGEHEAT_TARGETS__TOPRSS",
                                  "pageheat_binz", "PAGEHEAT_AGING__X", "PAGEHEAT_"])
def test_misspelt_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigError, match=f"unknown environment variable {re.escape(name)}") as e:
        from_env()
    assert "\n" not in str(e.value)


def test_misspelt_environment_variable_gets_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEHEAT_AGEING", "1s")
    with pytest.raises(ConfigError, match="did you mean PAGEHEAT_AGING"):
        from_env()


def test_every_setting_has_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    check_environment(dict.fromkeys(setting_names(), ""))  # all accepted
    assert "PAGEHEAT_TARGETS__TOP_RSS" in setting_names() and "PAGEHEAT_TLB_FLUSH" in setting_names()


ROOT = Path(__file__).resolve().parent.parent
DELIBERATELY_MISSPELT = {"test_unit_config.py", "test_cli.py", "test_cli_config.py"}  # they test the error


def test_pageheat_variables_used_by_tests_lab_and_scripts_are_not_errors() -> None:
    """Every PAGEHEAT_* name the repository's tests, lab, benchmarks and scripts use must be
    accepted: either a setting or a known non-setting (config.NOT_SETTINGS and its prefixes)."""
    used: set[str] = set()
    for folder in ("tests", "lab", "bench", "scripts", "kernel-patch", "deploy", ".ci", "exporter"):
        for path in (ROOT / folder).rglob("*"):
            if path.name in DELIBERATELY_MISSPELT:
                continue
            if path.is_file() and path.suffix in {".py", ".sh", ".yml", ".yaml", ".service", ""}:
                try:
                    text = path.read_text()
                except (UnicodeDecodeError, OSError):
                    continue
                used |= set(re.findall(r"\bPAGEHEAT_[A-Z0-9_]*[A-Z0-9]\b", text))
    assert "PAGEHEAT_REQUIRE_KERNEL" in used and "PAGEHEAT_LAB_OUT" in used  # the scan works
    used -= {"PAGEHEAT_LAB_KERNEL"}  # written PAGEHEAT_LAB_KERNEL_<NAME> in docs
    for name in sorted(used):
        check_environment({name: "x"})  # raises for an unknown one
    # No stale entries (PAGEHEAT_CONNECT_PASSWORD: top --connect's, from the http branch).
    assert NOT_SETTINGS <= used | {"PAGEHEAT_CONNECT_PASSWORD"}


def test_unknown_variables_outside_the_prefix_are_ignored() -> None:
    check_environment({"PATH": "/bin", "PAGEHEATX": "1", "XPAGEHEAT_AGING": "1"})


@pytest.mark.kind5
@pytest.mark.parametrize("field", ["aging", "cold_after", "discovery_interval"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1.0e+400", "1e400", "inf", "nan",
                                   f"{MAX_DURATION * 2:.0f}", "9999999999999999999999h", "true"])
def test_non_finite_or_absurd_durations_are_rejected(tmp_path: Path, field: str, value: str) -> None:
    f = tmp_path / "c.yml"
    f.write_text(f"{field}: {value}\n")
    with pytest.raises(ValidationError) as e:
        load(f, {})
    line = describe(e.value)
    assert line.startswith(f"bad configuration: {field}: ") and "\n" not in line


@pytest.mark.kind5
@pytest.mark.parametrize("value", [".inf", ".nan", "1.5", "-1", "true", str(1 << 70), "1e400", "-64MiB"])
def test_non_finite_or_absurd_sizes_are_rejected(tmp_path: Path, value: str) -> None:
    f = tmp_path / "c.yml"
    f.write_text(f"targets: {{min_rss: {value}}}\n")
    with pytest.raises(ValidationError, match="targets.min_rss"):
        load(f, {})


@pytest.mark.kind5
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1.0e+400"])
def test_non_finite_floats_are_rejected(tmp_path: Path, value: str) -> None:
    f = tmp_path / "c.yml"
    f.write_text(f"cpu_budget: {value}\n")
    with pytest.raises(ValidationError, match="cpu_budget"):
        load(f, {})
    for field in ("bins", "max_series", "never_accessed_mappings"):  # ints: no inf either
        f.write_text(f"{field}: {value}\n")
        with pytest.raises(ValidationError, match=field):
            load(f, {})


@pytest.mark.kind5
def test_environment_values_are_validated_like_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEHEAT_AGING", "inf")
    with pytest.raises(ValidationError, match="aging"):
        from_env()
    monkeypatch.setenv("PAGEHEAT_AGING", "1s")
    monkeypatch.setenv("PAGEHEAT_CPU_BUDGET", "nan")
    with pytest.raises(ValidationError, match="cpu_budget"):
        from_env()


def test_pids_above_the_kernel_limit_are_rejected() -> None:
    with pytest.raises(ValidationError):
        Targets(pids=[(1 << 22) + 1])
    assert Targets(pids=[1 << 22]).pids == [1 << 22]


@pytest.mark.kind5
@pytest.mark.parametrize(("env", "field", "values"), [
    ("PAGEHEAT_TLB_FLUSH", "tlb_flush", ("auto", "always", "never")),
    ("PAGEHEAT_MGLRU_AGING", "mglru_aging", ("active", "passive")),
])
def test_source_switches_are_settings(monkeypatch: pytest.MonkeyPatch, env: str, field: str,
                                      values: tuple[str, ...]) -> None:
    assert getattr(Config(), field) == values[0]
    for v in values:
        monkeypatch.setenv(env, v.upper())  # read case-insensitively, as before
        assert getattr(from_env(), field) == v
    monkeypatch.setenv(env, "bogus")
    with pytest.raises(ValidationError) as e:
        from_env()
    assert describe(e.value).startswith(f"bad configuration: {field}: ")
    assert getattr(load(None, {field: values[-1]}), field) == values[-1]


def test_listen_one_or_many() -> None:
    assert Config(listen="127.0.0.1:1").listen_addresses == [("127.0.0.1", 1)]
    c = Config(listen=["127.0.0.1:1", "[::1]:2", ":3"])
    assert c.listen_addresses == [("127.0.0.1", 1), ("::1", 2), ("0.0.0.0", 3)]
    assert c.host_port == ("127.0.0.1", 1)
    with pytest.raises(ValidationError, match="HOST:PORT"):
        Config(listen=["127.0.0.1:1", "nope"])
    with pytest.raises(ValidationError, match="at least one"):
        Config(listen=[])


def test_listen_list_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEHEAT_LISTEN", '["127.0.0.1:1", "127.0.0.1:2"]')
    assert from_env().listen_addresses == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    monkeypatch.setenv("PAGEHEAT_LISTEN", "127.0.0.1:3")
    assert from_env().listen_addresses == [("127.0.0.1", 3)]


@pytest.mark.parametrize(("path", "ok"), [
    ("/metrics", True), ("/prom/metrics", True), ("/x", True), ("metrics", False), ("", False),
    ("/", False), ("/healthz", False), ("/api/v1/targets", False), ("/a b", False), ("/m?x", False),
])
def test_telemetry_path(path: str, ok: bool) -> None:
    if ok:
        assert Config(telemetry_path=path).telemetry_path == path
    else:
        with pytest.raises(ValidationError, match="telemetry_path"):
            Config(telemetry_path=path)


@pytest.mark.kind5
@pytest.mark.parametrize("text", ["aging: 1s\ntargets: {top_rss: 3\n", "bins: [1, 2\n",
                                  "a: b: c\n", "aging: 1s\n\t- x\n", "x: 'unclosed\n"])
def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path, text: str) -> None:
    f = tmp_path / "c.yml"
    f.write_text(text)
    try:
        yaml.safe_load(text)
    except yaml.MarkedYAMLError as truth:
        mark = truth.problem_mark
    with pytest.raises(ConfigError) as e:
        load(f, {})
    msg = str(e.value)
    assert msg.startswith(f"config {f}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: ")
    assert "\n" not in msg


@pytest.mark.parametrize(("text", "where", "key", "first"), [
    ("aging: 1s\nbins: 8\naging: 2s\n", "3:1", "aging", 1),
    ("targets:\n  top_rss: 3\n  top_rss: 4\n", "3:3", "top_rss", 2),
])
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path, text: str, where: str,
                                                       key: str, first: int) -> None:
    f = tmp_path / "c.yml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=rf"^config {re.escape(str(f))}:{where}: .*key '{key}' given "
                                          rf"twice \(first at line {first}\)$"):
        load(f, {})


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("base: &b {top_rss: 3, min_rss: 1MiB}\ntargets:\n  <<: *b\n  top_rss: 5\n")
    assert read_yaml(f)["targets"] == {"top_rss": 5, "min_rss": "1MiB"}


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "1: 2\n", "42\n"])
def test_yaml_that_is_not_a_mapping_of_names(tmp_path: Path, text: str) -> None:
    f = tmp_path / "c.yml"
    f.write_text(text)
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        read_yaml(f)


def test_yaml_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("[" * 100000)
    with pytest.raises(ConfigError, match="nested too deeply|YAML syntax error"):
        read_yaml(f)


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("aging: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        read_yaml(f)


@pytest.mark.kind5
def test_bad_json_in_a_nested_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEHEAT_TARGETS", "{top_rss: 3")
    with pytest.raises(ConfigError, match="variable PAGEHEAT_TARGETS: not valid JSON"):
        from_env()


@pytest.mark.parametrize(("name", "value"), [("PAGEHEAT_TARGETS__CGROUPS", "/foo"),
                                             ("PAGEHEAT_TARGETS__PIDS", "[42,")])
def test_bad_json_in_a_subfield_variable_names_that_variable(monkeypatch: pytest.MonkeyPatch,
                                                             name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"variable {name}: not valid JSON") as e:
        from_env()
    assert "PAGEHEAT_TARGETS:" not in str(e.value)


# What kubelet sets for Services named pageheat and pageheat-metrics (service links).
SERVICE_LINKS = {"PAGEHEAT_SERVICE_HOST": "10.96.0.10", "PAGEHEAT_SERVICE_PORT": "9476",
                 "PAGEHEAT_SERVICE_PORT_METRICS": "9476", "PAGEHEAT_PORT": "tcp://10.96.0.10:9476",
                 "PAGEHEAT_PORT_9476_TCP": "tcp://10.96.0.10:9476", "PAGEHEAT_PORT_9476_TCP_PROTO": "tcp",
                 "PAGEHEAT_PORT_9476_TCP_PORT": "9476", "PAGEHEAT_PORT_9476_TCP_ADDR": "10.96.0.10",
                 "PAGEHEAT_METRICS_SERVICE_HOST": "10.96.0.11", "PAGEHEAT_METRICS_PORT": "tcp://10.96.0.11:9476"}


def test_kubernetes_service_links_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    check_environment(SERVICE_LINKS)
    for k, v in SERVICE_LINKS.items():
        monkeypatch.setenv(k, v)
    assert from_env() == Config()


@pytest.mark.parametrize(("name", "field"), [("PAGEHEAT_BPF_DIR", "bpf_dir"),
                                             ("PAGEHEAT_WEB_CONFIG_FILE", "web_config_file"),
                                             ("PAGEHEAT_TARGETS__COMM_REGEX", "targets")])
def test_an_empty_variable_is_an_unset_one(monkeypatch: pytest.MonkeyPatch, name: str, field: str) -> None:
    monkeypatch.setenv(name, "")
    assert getattr(from_env(), field) == getattr(Config(), field)


def test_an_empty_comm_regex_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"(?s)targets.comm_regex.*empty: it would match every process"):
        Config(targets={"comm_regex": ""})


def test_effective_settings_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yml"
    f.write_text("aging: 250ms\nlisten: [127.0.0.1:1, 127.0.0.1:2]\ntargets: {min_rss: 1MiB}\n")
    monkeypatch.setenv("PAGEHEAT_TLB_FLUSH", "never")
    c = load(f, {"bins": 8})
    again = tmp_path / "effective.yml"
    again.write_text(c.effective())
    monkeypatch.delenv("PAGEHEAT_TLB_FLUSH")
    assert load(again, {}) == c


@pytest.mark.parametrize("value", ["1\udcffs", "nope"])
def test_a_bad_value_is_shown_once(value: str) -> None:
    with pytest.raises(ValidationError) as e:
        Config(aging=value)
    msg = describe(e.value)
    assert msg.count(repr(value)) == 1, msg


def test_relative_paths_in_a_config_file_are_next_to_the_file(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "etc"
    d.mkdir()
    f = d / "pageheat.yml"
    f.write_text(f"web_config_file: web.yml\nbpf_dir: {tmp_path}/objs\n")
    monkeypatch.chdir(tmp_path)
    c = load(f, {})
    assert c.web_config_file == d / "web.yml"  # relative: the file's folder, not the cwd
    assert c.bpf_dir == tmp_path / "objs"  # absolute: as written
    assert load(f, {"web_config_file": "flag.yml"}).web_config_file == Path("flag.yml")  # flags: cwd
