"""The JSON formats of the HTTP API: one typed record per answer, one encoder, one decoder.

``/api/v1/heat`` (``Heat``): the latest per-bin counts of every followed target, for
``pageheat top --connect`` (``top/feed.py``'s RemoteFeed decodes it with ``decode_heat``).
``/api/v1/targets`` (a list of ``TargetSummary``): one line per followed target.
``?pid=N`` on either: that target only (an empty list when it is not followed).

The layouts are public API (scripts read them): add fields, never rename. The encoders produce
what ``json.dumps`` takes; the decoders take what ``json.loads`` gave and raise ApiError for
anything not in the format (a wrong type, a missing field, arrays of the wrong shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pageheat.model.aggregate import TargetView
from pageheat.serve.http import BadRequest

PAGE_SHIFT = 12
HEAT_PATH = "/api/v1/heat"
TARGETS_PATH = "/api/v1/targets"


class ApiError(ValueError):
    """A JSON answer that is not in the API's format."""


@dataclass(frozen=True)
class HeatTarget:
    """One target in ``/api/v1/heat``. Arrays have one row per combo, one column per bin.

    time: monotonic seconds (the server's clock) of the latest harvest; interval: its effective
    aging interval, seconds; harvests and rebins count since the target was first followed.
    addrs: start address of each bin, None unless the server exposes addresses.
    combos: (NUMA node, page type index) of each row. accessed_cum: int [combo, bin] pages
    seen accessed, summed over harvests (the client takes differences); resident: int
    [combo, bin] pages resident at the latest harvest. never_accessed: mapping label -> resident
    pages never seen accessed. cost_s: the server's smoothed harvest + aging cost, seconds.
    """

    pid: int
    comm: str
    time: float
    interval: float
    harvests: int
    rebins: int
    bins: int
    labels: tuple[str, ...]
    mapped_pages: int
    addrs: tuple[int, ...] | None
    combos: tuple[tuple[int, int], ...]
    accessed_cum: np.ndarray
    resident: np.ndarray
    never_accessed: dict[str, int]
    wss_pages: int
    resident_pages: int
    cold_pages: int
    cost_s: float = 0.0

    @classmethod
    def of(cls, view: TargetView, cost_s: float, expose_addresses: bool) -> HeatTarget:
        """The record of one aggregator view; addresses only if ``expose_addresses``."""
        return cls(
            pid=view.pid, comm=view.comm, time=view.time, interval=view.interval,
            harvests=view.harvests, rebins=view.rebins, bins=view.bins.n,
            labels=tuple(view.bins.labels), mapped_pages=view.bins.mapped_pages,
            addrs=tuple(int(e) << PAGE_SHIFT for e in view.bins.edges[:-1])
            if expose_addresses else None,
            combos=view.combos, accessed_cum=view.accessed_cum, resident=view.resident,
            never_accessed=view.never_accessed, wss_pages=view.wss_pages,
            resident_pages=view.resident_pages, cold_pages=view.cold_pages, cost_s=cost_s)


@dataclass(frozen=True)
class Heat:
    """The answer of ``/api/v1/heat``: the server's source, whether it exposes addresses, and
    the targets the query selected."""

    source: str
    expose_addresses: bool
    targets: tuple[HeatTarget, ...]


@dataclass(frozen=True)
class TargetSummary:
    """One target in ``/api/v1/targets``; pages are 4 KiB pages, the interval in seconds."""

    pid: int
    comm: str
    aging_interval_s: float
    resident_pages: int
    working_set_pages: int
    cold_pages: int
    harvests: int
    bins: int

    @classmethod
    def of(cls, view: TargetView) -> TargetSummary:
        return cls(pid=view.pid, comm=view.comm, aging_interval_s=view.interval,
                   resident_pages=view.resident_pages, working_set_pages=view.wss_pages,
                   cold_pages=view.cold_pages, harvests=view.harvests, bins=view.bins.n)


def selected_pid(query: Mapping[str, str]) -> int | None:
    """The pid of ``?pid=N``, None without one. Raises BadRequest (a 400) for a value that is
    not a positive process id (checked before int(): a 5000-digit string would raise there)."""
    if "pid" not in query:
        return None
    pid = query["pid"]
    if not (pid.isascii() and pid.isdigit() and len(pid) <= 10 and 0 < int(pid) < 2**31):
        raise BadRequest(f"pid: expected a process id, got {pid[:40]!r}")
    return int(pid)


# -- encoders -------------------------------------------------------------------------------------
def encode_heat_target(t: HeatTarget) -> dict[str, Any]:
    return {"pid": t.pid, "comm": t.comm, "time": t.time, "interval": t.interval,
            "harvests": t.harvests, "rebins": t.rebins, "bins": t.bins, "labels": list(t.labels),
            "mapped_pages": t.mapped_pages,
            "addrs": [hex(a) for a in t.addrs] if t.addrs is not None else None,
            "combos": [list(c) for c in t.combos], "accessed_cum": t.accessed_cum.tolist(),
            "resident": t.resident.tolist(), "never_accessed": t.never_accessed,
            "wss_pages": t.wss_pages, "resident_pages": t.resident_pages,
            "cold_pages": t.cold_pages, "cost_s": t.cost_s}


def encode_heat(heat: Heat) -> dict[str, Any]:
    return {"source": heat.source, "expose_addresses": heat.expose_addresses,
            "targets": [encode_heat_target(t) for t in heat.targets]}


def encode_targets(targets: list[TargetSummary]) -> list[dict[str, Any]]:
    return [asdict(t) for t in targets]


# -- decoders -------------------------------------------------------------------------------------
_MISSING: Any = object()


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
         default: Any = _MISSING) -> Any:
    """obj[key] checked to be of ``kind`` (bool is never taken for a number)."""
    if key not in obj:
        if default is _MISSING:
            raise ApiError(f"missing field {key!r}")
        return default
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ApiError(f"field {key!r}: expected {' or '.join(k.__name__ for k in kinds)}, "
                       f"got {type(value).__name__}")
    return value


def _matrix(obj: Mapping[str, Any], key: str, rows: int, cols: int) -> np.ndarray:
    """A list of ``rows`` lists of ``cols`` integers as int64 [rows, cols]."""
    value = _get(obj, key, list)
    try:
        a = np.array(value, dtype=np.int64)
        return a.reshape(rows, cols)
    except (ValueError, TypeError, OverflowError) as e:
        raise ApiError(f"field {key!r}: expected {rows} x {cols} integers ({e})") from None


def decode_heat_target(obj: object) -> HeatTarget:
    """One target of ``/api/v1/heat`` as json.loads gave it. comm, rebins, addrs and cost_s
    may be missing (servers before they were added). Raises ApiError."""
    if not isinstance(obj, dict):
        raise ApiError(f"a target: expected an object, got {type(obj).__name__}")
    bins = _get(obj, "bins", int)
    labels = _get(obj, "labels", list)
    if len(labels) != bins or not all(isinstance(x, str) for x in labels):
        raise ApiError(f"field 'labels': expected {bins} strings")
    addrs = _get(obj, "addrs", (list, type(None)), None)
    if addrs is not None:
        try:
            addrs = tuple(int(a, 16) for a in addrs)
        except (TypeError, ValueError):
            raise ApiError("field 'addrs': expected hexadecimal strings") from None
        if len(addrs) != bins:
            raise ApiError(f"field 'addrs': expected {bins} addresses, got {len(addrs)}")
    combos = _get(obj, "combos", list)
    if not all(isinstance(c, list) and len(c) == 2 and all(type(x) is int for x in c)
               for c in combos):
        raise ApiError("field 'combos': expected [node, type] pairs of integers")
    never = _get(obj, "never_accessed", dict)
    if not all(isinstance(k, str) and type(v) is int for k, v in never.items()):
        raise ApiError("field 'never_accessed': expected mapping names to integers")
    return HeatTarget(
        pid=_get(obj, "pid", int), comm=_get(obj, "comm", str, ""),
        time=float(_get(obj, "time", (int, float))),
        interval=float(_get(obj, "interval", (int, float))),
        harvests=_get(obj, "harvests", int), rebins=_get(obj, "rebins", int, 0), bins=bins,
        labels=tuple(labels), mapped_pages=_get(obj, "mapped_pages", int), addrs=addrs,
        combos=tuple((c[0], c[1]) for c in combos),
        accessed_cum=_matrix(obj, "accessed_cum", len(combos), bins),
        resident=_matrix(obj, "resident", len(combos), bins), never_accessed=dict(never),
        wss_pages=_get(obj, "wss_pages", int), resident_pages=_get(obj, "resident_pages", int),
        cold_pages=_get(obj, "cold_pages", int),
        cost_s=float(_get(obj, "cost_s", (int, float), 0.0)))


def decode_heat(obj: object) -> Heat:
    """The answer of ``/api/v1/heat`` as json.loads gave it. Raises ApiError."""
    if not isinstance(obj, dict):
        raise ApiError(f"expected an object, got {type(obj).__name__}")
    targets = _get(obj, "targets", list, [])
    return Heat(source=_get(obj, "source", str, "remote"),
                expose_addresses=_get(obj, "expose_addresses", bool, False),
                targets=tuple(decode_heat_target(t) for t in targets))


def decode_targets(obj: object) -> list[TargetSummary]:
    """The answer of ``/api/v1/targets`` as json.loads gave it. Raises ApiError."""
    if not isinstance(obj, list):
        raise ApiError(f"expected a list, got {type(obj).__name__}")
    out = []
    for t in obj:
        if not isinstance(t, dict):
            raise ApiError(f"a target: expected an object, got {type(t).__name__}")
        out.append(TargetSummary(
            pid=_get(t, "pid", int), comm=_get(t, "comm", str),
            aging_interval_s=float(_get(t, "aging_interval_s", (int, float))),
            resident_pages=_get(t, "resident_pages", int),
            working_set_pages=_get(t, "working_set_pages", int),
            cold_pages=_get(t, "cold_pages", int), harvests=_get(t, "harvests", int),
            bins=_get(t, "bins", int)))
    return out
