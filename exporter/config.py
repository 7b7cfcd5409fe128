"""Configuration: one pydantic model, read once at start-up.

Precedence: command-line flags over the YAML file over PAGEHEAT_* environment variables over
the defaults. A bad value fails validation with a message that names the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 9476
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(value: Any) -> float:
    """'500ms', '1s', '2m', '1h', '1.5s' or a number of seconds -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 1s, 2m)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_size(value: Any) -> int:
    """'64MiB', '1G', '4096' -> bytes."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (use e.g. 64MiB, 1GiB)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
SourceName = Literal["auto", "ptwalk", "mglru-fexit", "mglru-hook"]


class Targets(BaseModel):
    """Which processes to follow: the union of the three selectors."""

    model_config = ConfigDict(extra="forbid")

    pids: list[Annotated[int, Field(gt=0)]] = []
    comm_regex: str | None = None
    top_rss: Annotated[int, Field(ge=0)] = 5
    min_rss: Size = 64 << 20

    @field_validator("comm_regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"bad regular expression: {e}") from e
        return v


class Config(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAGEHEAT_", extra="forbid")

    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    source: SourceName = "auto"
    aging: Annotated[Duration, Field(ge=0.1)] = 1.0
    # Harvest plus aging may use this fraction of one CPU; larger targets age less often.
    cpu_budget: Annotated[float, Field(gt=0, le=64)] = 0.02
    bins: Annotated[int, Field(ge=2, le=1024)] = 32
    max_series: Annotated[int, Field(ge=100)] = 2000
    expose_addresses: bool = False
    cold_after: Annotated[Duration, Field(gt=0)] = 120.0
    discovery_interval: Annotated[Duration, Field(ge=0.1)] = 5.0
    never_accessed_mappings: Annotated[int, Field(ge=0)] = 10
    web_config_file: Path | None = None
    # The command after `serve --`: inherit pageheat's memory cgroup, or get one of its own
    # (an MGLRU aging walks every process in the target's memcg). No command: no effect.
    cgroup: Literal["inherit", "own"] = "inherit"
    # The harvest/aging worker thread's CPU priority: "idle" (SCHED_IDLE) runs it only when a
    # CPU would otherwise idle, so it never preempts the workload; "normal" as the rest.
    worker_priority: Literal["idle", "normal"] = "idle"
    targets: Targets = Targets()

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {v!r}")
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)


def load(path: Path | None, overrides: dict[str, Any]) -> Config:
    """The file (if any) with command-line overrides on top. Raises pydantic.ValidationError,
    OSError, or ValueError for YAML that is not a mapping."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a YAML mapping at the top level")
        data = loaded
    for key, value in overrides.items():
        if key == "pids":
            # --pid names exactly the processes to follow.
            data["targets"] = {**data.get("targets", {}), "pids": value, "top_rss": 0, "comm_regex": None}
        else:
            data[key] = value
    return Config(**data)
