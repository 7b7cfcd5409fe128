"""Configuration: one pydantic-settings model, read once at start-up.

Every setting of every command is a field of ``Config``. Precedence, highest first:
command-line flags, then ``PAGEHEAT_*`` environment variables (``PAGEHEAT_TARGETS__TOP_RSS``
for nested fields), then the YAML file, then the defaults. A bad value fails validation with
a message that names the field; a misspelt ``PAGEHEAT_*`` variable is an error too, except the
names in ``NOT_SETTINGS`` (the test suite's, the lab's and the kernel build's switches).

This is the only module that reads the environment: besides the settings, ``no_color()``
(the NO_COLOR convention) and ``connect_password()`` (``top --connect``'s secret, never a
setting, so never printed by ``--config.check``). The sources' options are typed here
(``TlbFlush``, ``MglruAging`` from ``pageheat.sources``) and handed down as
``Config.source_options()``.

Errors: ``load`` and ``from_env`` raise ``pydantic.ValidationError`` (a value is wrong),
``ConfigError`` (a file that is not YAML, an unknown variable) or ``OSError`` (the file cannot
be read). ``describe`` turns a ValidationError into one line.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pageheat.sources import NAMES, MglruAging, SourceOptions, TlbFlush
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

DEFAULT_PORT = 9476
ENV_PREFIX = "PAGEHEAT_"
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# Nothing pageheat schedules is meaningful beyond a week; larger values are typos or .inf.
MAX_DURATION = 7 * 86400.0
# x86-64 with 5-level paging addresses 2^57 bytes: no process or threshold can be larger.
MAX_SIZE = 1 << 57
# PID_MAX_LIMIT on 64-bit (include/linux/threads.h): 4 * 1024 * 1024.
PID_MAX_LIMIT = 1 << 22

# PAGEHEAT_* variables that are not daemon settings, so not misspelt ones: read by the tests
# (conftest.py, test_top.py, test_dashboards.py), by lab/ (PAGEHEAT_LAB_*, passed into the
# guests) and by kernel-patch/ (PAGEHEAT_KERNEL_*) and by deploy/image/build.sh (PAGEHEAT_IMAGE_*).
# PAGEHEAT_CONNECT_PASSWORD is a client's secret (top --connect), never a daemon setting: read
# here by connect_password(), never printed by --config.check.
CONNECT_PASSWORD_ENV = "PAGEHEAT_CONNECT_PASSWORD"
NOT_SETTINGS = frozenset({"PAGEHEAT_REQUIRE_KERNEL", "PAGEHEAT_UPDATE_SNAPSHOTS",
                          "PAGEHEAT_RENDER_DEMO", CONNECT_PASSWORD_ENV})
NOT_SETTINGS_PREFIXES = ("PAGEHEAT_LAB_", "PAGEHEAT_KERNEL_", "PAGEHEAT_IMAGE_")
# What kubelet puts in every container's environment for each Service of the namespace
# (Kubernetes "Discovering services": {SVCNAME}_SERVICE_HOST, {SVCNAME}_SERVICE_PORT[_{PORT
# NAME}] and the Docker-links {SVCNAME}_PORT[_{N}_{PROTO}[_PROTO|_PORT|_ADDR]]): a Service
# named pageheat or pageheat-* is not a misspelt setting.
_SERVICE_LINK = re.compile(r"PAGEHEAT(_[A-Z0-9_]+)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
                           r"|PORT(_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)")


class ConfigError(ValueError):
    """A configuration problem already phrased as one line (file, line and column, or name)."""


def parse_duration(value: Any) -> float:
    """'500ms', '1s', '2m', '1h', '1.5s' or a number of seconds -> seconds (float).

    Raises ValueError for anything else, and for non-finite or absurd values (inf, nan, more
    than MAX_DURATION): an aging interval of .inf would silently never harvest."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 1s, 2m)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", str(value))
        if not m:
            raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 1s, 2m)")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION:
        raise ValueError(f"not a duration: {value!r} (must be finite, from 0 to 7 days)")
    return seconds


def parse_size(value: Any) -> int:
    """'64MiB', '1G', '4096' -> bytes (int). Raises ValueError for anything else, negative
    sizes and sizes above MAX_SIZE."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(f"not a size: {value!r} (use e.g. 64MiB, 1GiB)")
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*([0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(value))
        if not m:
            raise ValueError(f"not a size: {value!r} (use e.g. 64MiB, 1GiB)")
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if not 0 <= size <= MAX_SIZE:
        raise ValueError(f"not a size: {value!r} (must be from 0 to 128PiB)")
    return size


# A host name (RFC 1123 labels) or an IPv4 address; IPv6 goes in brackets.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or '[v6]:PORT' -> (host, port); an empty host is 0.0.0.0. HOST is
    a host name or an IPv4 address; an IPv6 address must be in brackets (a zone is allowed:
    [fe80::1%eth0]). Raises ValueError naming what is wrong."""
    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT with a port from 1 to 65535, got {value!r}")
    if host.startswith("[") or host.endswith("]"):
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else None
        try:
            if inner is None:
                raise ValueError
            ipaddress.IPv6Address(inner.partition("%")[0])
        except ValueError:
            raise ValueError(f"expected [IPv6]:PORT, got {value!r}") from None
        return inner, int(port)
    if ":" in host:
        raise ValueError(f"expected HOST:PORT, got {value!r} "
                         "(an IPv6 address goes in brackets: [::1]:PORT)")
    if host and not _HOST_NAME.fullmatch(host):
        raise ValueError(f"expected HOST:PORT, got {value!r}: {host!r} is not a host name "
                         "or address")
    return host or "0.0.0.0", int(port)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
# The registry's names (pageheat.sources.SOURCES), so that a new source is one entry there.
SourceName = Literal[("auto", *NAMES)]  # type: ignore[valid-type]
# Paths the HTTP server answers itself; the telemetry path must not hide them.
RESERVED_PATHS = ("/", "/healthz")


class Targets(BaseModel):
    """Which processes to follow: the union of the selectors.

    ``cgroups``: globs over the cgroup path (the memory controller's on cgroup v1, the unified
    one on v2; ``*`` within one component, ``**`` across ``/``, see identity.glob_regex): every
    process with memory in a matching cgroup. ``all``: every user process with at least
    ``min_rss`` resident (kernel threads and pageheat itself never)."""

    model_config = ConfigDict(extra="forbid")

    pids: list[Annotated[int, Field(gt=0, le=PID_MAX_LIMIT)]] = []
    comm_regex: str | None = None
    top_rss: Annotated[int, Field(ge=0)] = 5
    min_rss: Size = 64 << 20
    cgroups: list[str] = []
    all: bool = False

    @field_validator("cgroups")
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        # Imported when validating: config is read before anything else is imported.
        from pageheat.model.identity import glob_regex

        for pattern in v:
            if not pattern.startswith("/"):
                raise ValueError(f"cgroup pattern {pattern!r} must start with / (a cgroup path "
                                 "as /proc/PID/cgroup shows it)")
            if len(pattern) > 1 and pattern.endswith("/"):  # no cgroup path ends with /
                raise ValueError(f"cgroup pattern {pattern!r} ends with / and would match "
                                 f"nothing: {pattern.rstrip('/')} for the cgroup, "
                                 f"{pattern.rstrip('/')}/** for its subtree")
            glob_regex(pattern)
        return v

    @field_validator("comm_regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v == "":  # would match every process, min_rss or not
            raise ValueError("empty: it would match every process; to follow every process "
                             "above min_rss, set targets.all")
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"bad regular expression: {e}") from e
        return v


class Config(BaseSettings):
    """Every setting of pageheat (see the module docstring for where each comes from)."""

    # An empty variable is an unset one (PAGEHEAT_BPF_DIR= would otherwise be ".").
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                      extra="forbid", env_ignore_empty=True)

    # One HOST:PORT or a list of them (--web.listen-address is repeatable).
    listen: str | list[str] = f"0.0.0.0:{DEFAULT_PORT}"
    telemetry_path: str = "/metrics"
    source: SourceName = "auto"
    aging: Annotated[Duration, Field(ge=0.1)] = 1.0
    # Harvest plus aging may use this fraction of one CPU; larger targets age less often.
    cpu_budget: Annotated[float, Field(gt=0, le=64, allow_inf_nan=False)] = 0.02
    bins: Annotated[int, Field(ge=2, le=1024)] = 32
    # Series /metrics may carry (README, Cardinality: the formula). 20,000 fits a host of 200
    # containers with room to spare (about 11,900 with the defaults, 15,800 with shmem pages).
    max_series: Annotated[int, Field(ge=100)] = 20000
    expose_addresses: bool = False
    cold_after: Annotated[Duration, Field(gt=0)] = 120.0
    discovery_interval: Annotated[Duration, Field(ge=0.1)] = 5.0
    never_accessed_mappings: Annotated[int, Field(ge=0)] = 10
    web_config_file: Path | None = None
    # The command after `serve --`: inherit pageheat's memory cgroup, or get one of its own
    # (an MGLRU aging walks every process in the target's memcg). No command: no effect.
    cgroup: Literal["inherit", "own"] = "inherit"
    # The TLB flush after each aging (docs/ACCURACY.md): auto = only where no soft-dirty
    # tracking would be disturbed. Read by every source.
    tlb_flush: Annotated[TlbFlush, BeforeValidator(_lower)] = TlbFlush.AUTO
    # mglru sources: request agings (active) or only watch the kernel's own (passive).
    mglru_aging: Annotated[MglruAging, BeforeValidator(_lower)] = MglruAging.ACTIVE
    # Where the compiled BPF objects (NAME.bpf.o) are; None: the package's own bpf/ folder.
    # A packaging location like PYTHONPATH, for development (PAGEHEAT_BPF_DIR).
    bpf_dir: Path | None = None
    # The harvest/aging worker thread's CPU priority: "idle" (SCHED_IDLE) runs it only when a
    # CPU would otherwise idle, so it never preempts the workload; "normal" as the rest.
    worker_priority: Literal["idle", "normal"] = "idle"
    targets: Targets = Targets()
    # Per-process series (heatmaps) only for this many followed processes, the largest by
    # resident size; the others count only in their cgroup's pageheat_cgroup_* aggregates.
    per_process_series_top: Annotated[int, Field(ge=0)] = 10
    # pageheat_cgroup_working_set_bytes windows: each must be a finite bound of
    # pageheat_idle_pages (1s 2s 5s 10s 30s 1m 2m 5m 10m 30m 1h), read from the idle histogram.
    working_set_windows: list[Duration] = [60.0, 300.0]

    @field_validator("working_set_windows")
    @classmethod
    def _windows(cls, v: list[float]) -> list[float]:
        from pageheat.model.aggregate import IDLE_BOUNDS

        bounds = [b for b in IDLE_BOUNDS if math.isfinite(b)]
        for w in v:
            if w not in bounds:
                raise ValueError(f"working-set window {w:g}s is not one of the idle-age bounds "
                                 f"({', '.join(f'{b:g}s' for b in bounds)})")
        return sorted(set(v))

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | list[str]) -> str | list[str]:
        seen: dict[tuple[str, int], str] = {}
        for one in [v] if isinstance(v, str) else v:
            key = parse_listen(one)
            if key in seen:
                also = "" if one == seen[key] else f" (as {seen[key]!r})"
                raise ValueError(f"{one!r} is listed twice{also}")
            seen[key] = one
        if isinstance(v, list) and not v:
            raise ValueError("expected at least one HOST:PORT")
        return v

    @field_validator("telemetry_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not re.fullmatch(r"/[^\s?#]*", v):
            raise ValueError(f"expected a path starting with /, without spaces, ? or #, got {v!r}")
        if v in RESERVED_PATHS or v.startswith("/api/"):
            raise ValueError(f"{v} is served by pageheat itself; choose another path")
        return v

    @property
    def listen_addresses(self) -> list[tuple[str, int]]:
        """Every address to listen on, as (host, port)."""
        return [parse_listen(one) for one in ([self.listen] if isinstance(self.listen, str)
                                              else self.listen)]

    @property
    def host_port(self) -> tuple[str, int]:
        """The first listen address."""
        return self.listen_addresses[0]

    def source_options(self, pfns: bool = False, lazy_pages: bool = False) -> SourceOptions:
        """The settings a source is opened with (``pfns``, ``lazy_pages``: see SourceOptions)."""
        return SourceOptions(self.tlb_flush, self.mglru_aging, pfns, self.bpf_dir, lazy_pages)

    @property
    def targets_configured(self) -> bool:
        """Whether targets came from flags, the environment or the file (not the defaults)."""
        return "targets" in self.model_fields_set

    def effective(self) -> str:
        """The settings as YAML, in the file's format (durations in seconds, sizes in bytes)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: flags (init kwargs), environment, file; nested dicts are merged.
        return (init_settings, _CheckedEnv(settings_cls), _FileSource(settings_cls, _FILE.get() or {}))


# The file's contents for the Config being built (settings_customise_sources is a classmethod).
_FILE: ContextVar[Mapping[str, Any] | None] = ContextVar("pageheat_config_file", default=None)


class _FileSource(PydanticBaseSettingsSource):
    """The YAML file's mapping, as it is: unknown or mis-cased keys fail as extra fields."""

    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self.data = dict(data)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.data


class _CheckedEnv(EnvSettingsSource):
    """The environment, after checking that every PAGEHEAT_* name is a setting."""

    def __call__(self) -> dict[str, Any]:
        check_environment(os.environ)
        return super().__call__()


def setting_names() -> list[str]:
    """Every environment variable name that sets a field, nested ones with '__'."""
    names = []
    for name, field in Config.model_fields.items():
        names.append(ENV_PREFIX + name.upper())
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names += [f"{ENV_PREFIX}{name.upper()}__{sub.upper()}" for sub in field.annotation.model_fields]
    return names


def check_environment(environ: Mapping[str, str]) -> None:
    """Raise ConfigError for a PAGEHEAT_* variable that is neither a setting nor in
    NOT_SETTINGS: a misspelt name would otherwise be silently ignored."""
    known = set(setting_names())
    for key in environ:
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper in NOT_SETTINGS \
                or upper.startswith(NOT_SETTINGS_PREFIXES) or _SERVICE_LINK.fullmatch(upper):
            continue
        close = difflib.get_close_matches(upper, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown environment variable {key}{hint}; settings are "
                          f"{ENV_PREFIX}<FIELD> or {ENV_PREFIX}<FIELD>__<SUBFIELD>")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last
    one silently, so `aging:` written twice would half-apply a config. Keys merged in with
    `<<` are not in the mapping's own nodes and may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: SafeLoader reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first at line {first.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str = "config") -> dict[str, Any]:
    """A YAML file whose top level is a mapping with string keys (an empty file is {}).

    Raises OSError if it cannot be read, ConfigError naming the file, line and column for a
    syntax error or a key given twice, and ConfigError for anything that is not such a
    mapping."""
    data = path.read_bytes()
    try:
        loaded = yaml.load(data, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = e.problem or e.context or "invalid YAML"
        if e.context and e.context_mark and e.problem:  # where the unclosed construct began
            problem += f" ({e.context} started at {e.context_mark.line + 1}:{e.context_mark.column + 1})"
        raise ConfigError(f"{what} {where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:  # e.g. bytes that are not UTF-8 or UTF-16
        raise ConfigError(f"{what} {path}: not YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{what} {path}: nested too deeply") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise ConfigError(f"{what} {path}: expected a YAML mapping of names at the top level")
    return loaded


# Config fields that name files: relative in a config file, relative to that file's folder
# (from the environment or a flag, relative to the working directory, as any command's).
_FILE_PATHS = ("web_config_file", "bpf_dir")


def load(path: Path | None, overrides: dict[str, Any]) -> Config:
    """Defaults < the file (if any) < the environment < command-line ``overrides``.

    ``overrides["pids"]`` names exactly the processes to follow (no top-N, no regex).
    Raises ValidationError, ConfigError or OSError (see the module docstring)."""
    data = read_yaml(path) if path is not None else {}
    if path is not None:  # a relative path in the file means next to the file, as Prometheus reads its own
        for key in _FILE_PATHS:
            if isinstance(data.get(key), str) and data[key] and not Path(data[key]).is_absolute():
                data[key] = str(path.parent / data[key])
    init: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "pids":
            init["targets"] = {"pids": value, "top_rss": 0, "comm_regex": None, "cgroups": [],
                              "all": False}
        else:
            init[key] = value
    token = _FILE.set(data)
    try:
        return Config(**init)
    except SettingsError as e:  # e.g. PAGEHEAT_TARGETS that is not JSON
        field = re.search(r'field "([^"]+)"', str(e))
        name = f"{ENV_PREFIX}{field.group(1).upper()}" if field else "a PAGEHEAT_* variable"
        # Name what was set: the field's own variable, or its FIELD__SUBFIELD ones (a list
        # subfield takes JSON too).
        names = sorted(k for k in os.environ if k.upper() == name or k.upper().startswith(name + "__"))
        raise ConfigError(f"bad configuration: environment variable {', '.join(names) or name}: not "
                          "valid JSON (nested settings and lists take JSON, e.g. "
                          f"{ENV_PREFIX}TARGETS__PIDS='[1, 2]')") from None
    finally:
        _FILE.reset(token)


def from_env() -> Config:
    """Defaults and the environment: the settings of commands without a config file."""
    return load(None, {})


def no_color(environ: Mapping[str, str] | None = None) -> bool:
    """The NO_COLOR convention (https://no-color.org): set and not empty means no colour."""
    return bool((os.environ if environ is None else environ).get("NO_COLOR"))


def connect_password(environ: Mapping[str, str] | None = None) -> str | None:
    """``top --connect``'s basic auth password from PAGEHEAT_CONNECT_PASSWORD (None: unset)."""
    return (os.environ if environ is None else environ).get(CONNECT_PASSWORD_ENV)


def describe(e: ValidationError, what: str = "bad configuration", echo: bool = True) -> str:
    """One line: every failing field as ``dotted.loc: message (got VALUE)``; without the
    values when ``echo`` is false (a web config's values may be passwords)."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        got = f" (got {value!r})" if echo and isinstance(value, str | int | float) \
            and len(repr(value)) <= 40 and err["type"] != "missing" and str(value) not in msg \
            and repr(value) not in msg else ""
        parts.append(f"{loc}: {msg}{got}")
    return f"{what}: " + "; ".join(" ".join(p.split()) for p in parts)
