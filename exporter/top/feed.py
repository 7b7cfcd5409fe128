"""Where `pageheat top` gets its data: one ``Sample`` per aging, binned for display.

``LocalFeed`` drives a source (``pageheat.sources``) and the aggregator
(``TargetState.update``) unchanged, and bins every harvest into display bins made with
``make_bins`` over the whole process or over the zoomed range only. ``RemoteFeed`` follows a
running ``pageheat serve`` through ``/api/v1/heat`` (https and basic auth: ``Endpoint``;
the format and its decoder are ``pageheat.serve.api``'s); it sees the daemon's bins only.

Both ``step`` methods block (system calls, HTTP) and run on a worker thread.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NoReturn
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np
from pageheat.config import CONNECT_PASSWORD_ENV, Config, connect_password
from pageheat.model.aggregate import Bins, TargetState, make_bins, mapping_label, needs_rebin
from pageheat.serve import api
from pageheat.sources.base import PAGE_TYPE_NAMES, VMA_KIND_NAMES, Harvest, Source, Vmas

PAGE = 4096
DEFAULT_BINS = 64
TABLE_ROWS = 40


@dataclass(frozen=True)
class Layout:
    """The display bins: what each row of the heatmap covers."""

    labels: tuple[str, ...]  # mapping name(s) per bin
    addrs: tuple[int, ...] | None  # start address per bin; None when addresses are hidden
    bin_pages: float  # mapped pages per bin (average)
    zoom: tuple[int, int] | None  # (start, end) addresses when zoomed in
    key: tuple = ()  # changes whenever the bins change
    end: int = 0  # end address of the last bin (0: unknown)

    @property
    def n(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class MappingRow:
    name: str
    kind: str
    start: int | None
    end: int | None
    resident: int
    accessed: int  # in the latest interval
    never: int  # resident pages never seen accessed
    idle_median: float  # seconds; inf: the median page was never accessed; nan: unknown


@dataclass(frozen=True)
class Sample:
    """One aging interval, binned. Arrays have one element per display bin."""

    time: float
    layout: Layout
    accessed: np.ndarray  # int64 pages accessed in the interval
    resident: np.ndarray  # int64
    node: np.ndarray  # int16 dominant NUMA node, -1: none
    type: np.ndarray  # int8 dominant PageType, -1: none
    idle: np.ndarray  # float64 median idle seconds (inf: never accessed, nan: nothing resident)
    never: np.ndarray  # int64 resident pages never seen accessed
    harvest_s: float = 0.0
    aging_s: float = 0.0
    interval: float = 0.0  # effective aging interval: time since the previous harvest
    wss_pages: int = 0
    resident_pages: int = 0
    cold_pages: int = 0
    mappings: tuple[MappingRow, ...] = ()
    agings: int = 1  # agings this sample covers (over --connect a poll can see several)
    extra: dict = field(default_factory=dict)


def _median_by_group(group: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Median of ``values`` per group index in [0, n); nan for empty groups."""
    out = np.full(n, np.nan)
    if len(group) == 0:
        return out
    order = np.lexsort((values, group))
    counts = np.bincount(group, minlength=n)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    has = counts > 0
    out[has] = values[order][starts[has] + counts[has] // 2]
    return out


def _dominant(group: np.ndarray, category: np.ndarray, n: int, n_cat: int) -> np.ndarray:
    """Most frequent category per group; -1 for empty groups."""
    if len(group) == 0 or n_cat == 0:
        return np.full(n, -1, dtype=np.int16)
    counts = np.bincount(group * n_cat + category, minlength=n * n_cat).reshape(n, n_cat)
    dom = counts.argmax(axis=1).astype(np.int16)
    dom[counts.sum(axis=1) == 0] = -1
    return dom


def clip_vmas(vmas: Vmas, lo: int, hi: int) -> Vmas:
    """The mappings overlapping [lo, hi), cut to it."""
    keep = np.flatnonzero((vmas.end > np.uint64(lo)) & (vmas.start < np.uint64(hi)))
    return Vmas(np.maximum(vmas.start[keep], np.uint64(lo)), np.minimum(vmas.end[keep], np.uint64(hi)),
                vmas.kind[keep], vmas.accessible[keep], [vmas.names[i] for i in keep])


class LocalFeed:
    """Follows one process with a source on this machine."""

    remote = False

    def __init__(self, source: Source, pid: int, comm: str = "", n_bins: int = DEFAULT_BINS,
                 bins: int = Config.model_fields["bins"].default,
                 cold_after: float = Config.model_fields["cold_after"].default) -> None:
        """``n_bins``: display bins; ``bins`` and ``cold_after``: the Config's, for the
        aggregator's state (what `serve` would export: working set, cold pages)."""
        self.source = source
        self.pid = pid
        self.comm = comm
        self.state = TargetState(pid, comm, bins, cold_after)
        self.n_bins = n_bins  # display bins: two per text row
        # Replaced, never mutated: the UI thread sets it, the harvest thread reads it.
        self.zoom_stack: tuple[tuple[int, int], ...] = ()
        self.bins: Bins | None = None
        self._bins_key: tuple = ()
        self._last: Harvest | None = None
        self._prev_time: float | None = None
        self.layouts = 0

    @property
    def source_name(self) -> str:
        return self.source.name

    def attach(self) -> None:
        self.source.attach(self.pid)
        self._prev_time = time.monotonic()

    def close(self) -> None:
        self.source.detach(self.pid)
        self.source.close()

    def step(self, interval: float) -> Sample:
        """Harvest once (closing the current interval) and bin it. Raises TargetGone."""
        h = self.source.cycle(self.pid)
        return self.ingest(h, interval)

    def ingest(self, h: Harvest, interval: float) -> Sample:
        effective = h.time - self._prev_time if self._prev_time is not None else interval
        self._prev_time = h.time
        view = self.state.update(h, interval)
        self._last = h
        return self._sample(h, effective, view.wss_pages, view.resident_pages, view.cold_pages)

    def rebin(self) -> Sample | None:
        """Bin the latest harvest again (after a zoom or a resize); None before the first."""
        h = self._last
        if h is None:
            return None
        return self._sample(h, 0.0, int(np.count_nonzero(h.pages.accessed)), len(h.pages), 0,
                            preview=True)

    # -- zoom ------------------------------------------------------------------------------
    def zoom_in(self, lo: int, hi: int) -> None:
        if hi - lo >= PAGE:
            self.zoom_stack = (*self.zoom_stack, (lo, hi))

    def zoom_out(self) -> None:
        self.zoom_stack = self.zoom_stack[:-1]

    # -- binning ---------------------------------------------------------------------------
    def _display_bins(self, h: Harvest, zoom: tuple[int, int] | None) -> Bins:
        vmas = clip_vmas(h.vmas, *zoom) if zoom else h.vmas
        n_bins = self.n_bins
        key = (n_bins, zoom)
        b = self.bins
        # The aggregator's re-bin rule, over the zoomed range's mappings and pages.
        if b is not None and key == self._bins_key and \
                not needs_rebin(b, vmas, b.outside(h.pages.vpn[self._in_zoom(h.pages.vpn, zoom)]),
                                len(h.pages)):
            return b
        self.bins = make_bins(vmas, n_bins) if len(vmas) else make_bins(h.vmas, n_bins)
        self._bins_key = key
        self.layouts += 1
        return self.bins

    @staticmethod
    def _in_zoom(vpn: np.ndarray, zoom: tuple[int, int] | None) -> np.ndarray:
        if zoom is None:
            return np.ones(len(vpn), dtype=bool)
        lo, hi = zoom
        return (vpn >= np.uint64(lo >> 12)) & (vpn < np.uint64((hi + PAGE - 1) >> 12))

    def _sample(self, h: Harvest, effective: float, wss: int, resident_pages: int, cold: int,
                preview: bool = False) -> Sample:
        stack = self.zoom_stack
        zoom = stack[-1] if stack else None
        bins = self._display_bins(h, zoom)
        p = h.pages
        nb = bins.n
        keep = self._in_zoom(p.vpn, zoom)
        vpn = p.vpn[keep]
        b = bins.of(vpn)
        acc = p.accessed[keep]
        age = self.state.idle_ages(vpn, h.time)
        age = np.where(np.isnan(age), np.inf, age)
        never_page = np.isinf(age)
        node = p.node[keep].astype(np.int64)
        n_nodes = int(node.max()) + 2 if len(node) else 1
        layout = Layout(labels=bins.labels, addrs=tuple(int(e) << 12 for e in bins.edges[:-1]),
                        bin_pages=bins.mapped_pages / max(nb, 1), zoom=zoom,
                        key=(self.layouts, nb, zoom), end=int(bins.edges[-1]) << 12)
        return Sample(
            time=h.time, layout=layout,
            accessed=np.bincount(b[acc], minlength=nb).astype(np.int64),
            resident=np.bincount(b, minlength=nb).astype(np.int64),
            node=(_dominant(b, node + 1, nb, n_nodes) - 1).astype(np.int16) if len(b)
            else np.full(nb, -1, np.int16),
            type=_dominant(b, p.type[keep].astype(np.int64), nb, len(PAGE_TYPE_NAMES)).astype(np.int8),
            idle=_median_by_group(b, age, nb),
            never=np.bincount(b[never_page], minlength=nb).astype(np.int64),
            harvest_s=h.harvest_seconds, aging_s=h.aging_seconds, interval=effective,
            wss_pages=wss, resident_pages=resident_pages, cold_pages=cold,
            mappings=self._mappings(h, age, keep), extra={"preview": preview},
        )

    def _mappings(self, h: Harvest, age: np.ndarray, keep: np.ndarray) -> tuple[MappingRow, ...]:
        p = h.pages
        nv = len(h.vmas)
        v = p.vma[keep].astype(np.int64)
        resident = np.bincount(v, minlength=nv)
        accessed = np.bincount(v[p.accessed[keep]], minlength=nv)
        never = np.bincount(v[np.isinf(age)], minlength=nv)
        med = _median_by_group(v, age, nv)
        order = [int(i) for i in np.argsort(-resident, kind="stable") if resident[i] > 0][:TABLE_ROWS]
        return tuple(MappingRow(mapping_label(h.vmas.names[i]), VMA_KIND_NAMES[int(h.vmas.kind[i])],
                                int(h.vmas.start[i]), int(h.vmas.end[i]), int(resident[i]),
                                int(accessed[i]), int(never[i]), float(med[i]))
                     for i in order)


CREDENTIALS_HINT = (f"user in the URL or --connect-user; password in the URL, "
                    f"--connect-password-file or {CONNECT_PASSWORD_ENV}")


class ConnectError(ValueError):
    """The server cannot be reached or refuses us: one line, without the password."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """``pageheat serve`` never redirects. Following a redirect would send the Authorization
    header wherever its Location points, another host or plain http included: urllib copies
    a request's headers into the redirected one (``HTTPRedirectHandler.redirect_request``)."""

    def redirect_request(self, req: urllib.request.Request, fp: object, code: int, msg: str,
                         headers: object, newurl: str) -> NoReturn:
        where = urlsplit(newurl)  # shown without a user or password it may carry
        shown = urlunsplit((where.scheme, where.netloc.rpartition("@")[2], where.path, "", ""))
        raise ConnectError(f"HTTP {code}: the server redirects to {shown}; not followed, so that "
                           f"the credentials go nowhere else (connect to that URL if you trust it)")


@dataclass(frozen=True)
class Endpoint:
    """A running ``pageheat serve``: where, and how to authenticate to it.

    base: the URL without credentials (safe to print); authorization: the Authorization header
    (basic auth) or None; context: the TLS context for https (the system CAs, or ``ca_file``).
    """

    base: str
    authorization: str | None = None
    context: ssl.SSLContext | None = None

    @classmethod
    def parse(cls, url: str, user: str | None = None, password_file: str | None = None,
              ca_file: str | None = None, env: Mapping[str, str] | None = None) -> Endpoint:
        """Credentials come from the URL (``https://USER:PASSWORD@HOST:PORT``, percent-encoded)
        or from ``user`` with the password read from ``password_file`` (its first line) or from
        the environment variable PAGEHEAT_CONNECT_PASSWORD (in ``env``, by default the process
        environment, read by config.connect_password): never only from the command line.
        Raises ConnectError (a bad URL, a user without a password, an unreadable file)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise ConnectError(f"not a URL ({e}): expected http[s]://HOST:PORT") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConnectError("expected http://HOST:PORT or https://HOST:PORT")
        if ca_file and parts.scheme != "https":
            raise ConnectError("--ca-file needs an https:// URL")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = host + (f":{port}" if port else "")
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        name = unquote(parts.username) if parts.username is not None else user
        password = unquote(parts.password) if parts.password is not None else None
        if password is None and name is not None:
            if password_file:
                try:
                    with open(password_file, encoding="utf-8") as f:
                        password = f.readline().rstrip("\r\n")
                except (OSError, UnicodeDecodeError) as e:
                    raise ConnectError(f"--connect-password-file: {e}") from None
            elif (from_env := connect_password(env)) is not None:
                password = from_env
            else:
                raise ConnectError(f"user {name!r} without a password: give it in the URL, "
                                   f"with --connect-password-file or in {CONNECT_PASSWORD_ENV}")
        elif password_file and name is None:
            raise ConnectError("--connect-password-file without a user: add --connect-user")
        auth = None
        if name is not None:
            token = base64.b64encode(f"{name}:{password}".encode()).decode()
            auth = f"Basic {token}"
        context = None
        if parts.scheme == "https":
            try:
                context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as e:
                raise ConnectError(f"--ca-file {ca_file}: {e}") from None
        return cls(base, auth, context)

    def get_json(self, path: str, timeout: float) -> object:
        """GET base + path and decode the JSON. Raises ConnectError."""
        req = urllib.request.Request(self.base + path)
        if self.authorization:
            req.add_header("Authorization", self.authorization)
        opener = urllib.request.build_opener(_RefuseRedirects,
                                             urllib.request.HTTPSHandler(context=self.context))
        try:
            with opener.open(req, timeout=timeout) as r:
                return json.load(r)
        except ConnectError:  # a refused redirect; a ValueError, so not the clause below
            raise
        except urllib.error.HTTPError as e:
            if e.code == 401:
                raise ConnectError(f"401 Unauthorized: wrong or missing credentials ({CREDENTIALS_HINT})"
                                   ) from None
            raise ConnectError(f"HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            why = str(e.reason)
            if isinstance(e.reason, ssl.SSLCertVerificationError):
                why += " (a private CA: --ca-file)"
            raise ConnectError(why) from None
        except (OSError, ValueError) as e:  # timeouts, resets, a body that is not JSON
            raise ConnectError(str(e) or type(e).__name__) from None


class RemoteFeed:
    """Follows one target of a running ``pageheat serve`` through ``/api/v1/heat``."""

    remote = True
    source_name = "remote"

    def __init__(self, url: str, pid: int | None = None, timeout: float = 5.0, *,
                 user: str | None = None, password_file: str | None = None,
                 ca_file: str | None = None) -> None:
        self.endpoint = Endpoint.parse(url, user, password_file, ca_file)
        self.base = self.endpoint.base
        self.pid = pid
        self.comm = ""
        self.timeout = timeout
        self.zoom_stack: tuple[tuple[int, int], ...] = ()
        self.n_bins = 0
        self._prev: api.HeatTarget | None = None
        self._layout: Layout | None = None

    def attach(self) -> None:
        self._fetch()

    def close(self) -> None:
        pass

    def zoom_in(self, lo: int, hi: int) -> None:
        """The daemon's bins are fixed: no zoom over --connect."""

    def zoom_out(self) -> None:
        pass

    def rebin(self) -> Sample | None:
        return None

    def _fetch(self) -> api.HeatTarget:
        body = self.endpoint.get_json(api.HEAT_PATH + (f"?pid={self.pid}" if self.pid else ""),
                                      self.timeout)
        try:
            heat = api.decode_heat(body)
        except api.ApiError as e:
            raise ConnectError(f"{api.HEAT_PATH}: not a pageheat answer: {e}") from None
        if self.pid is None and heat.targets:
            self.pid = heat.targets[0].pid
        for t in heat.targets:
            if t.pid == self.pid:
                self.comm = t.comm
                self.source_name = heat.source
                return t
        raise LookupError(f"pid {self.pid} is not followed by {self.base}")

    def step(self, interval: float) -> Sample | None:
        """Poll once; a Sample when the daemon harvested since the last poll, else None."""
        t = self._fetch()
        prev, self._prev = self._prev, t
        if prev is None or t.harvests == prev.harvests or t.bins != prev.bins \
                or t.rebins != prev.rebins:
            return None
        return self.sample_between(t, prev)

    @staticmethod
    def sample_from(t: Mapping, prev: Mapping) -> Sample:
        """The Sample between two targets of ``/api/v1/heat`` as json.loads gave them.
        Raises api.ApiError."""
        return RemoteFeed.sample_between(api.decode_heat_target(t), api.decode_heat_target(prev))

    @staticmethod
    def sample_between(t: api.HeatTarget, prev: api.HeatTarget) -> Sample:
        """The Sample between two polls of the same target with the same bins."""
        nb = t.bins
        combos = t.combos
        cum = dict(zip(combos, t.accessed_cum, strict=True))
        old = dict(zip(prev.combos, prev.accessed_cum, strict=True))
        accessed_by = np.array([cum[c] - old.get(c, 0) for c in combos]).reshape(len(combos), nb)
        resident_by = t.resident
        nodes = np.array([c[0] for c in combos], dtype=np.int16)
        types = np.array([c[1] for c in combos], dtype=np.int8)
        resident = resident_by.sum(axis=0) if len(combos) else np.zeros(nb, dtype=np.int64)
        # Dominant node and type, each over the combos that share it.
        node_dom = np.full(nb, -1, np.int16)
        type_dom = np.full(nb, -1, np.int8)
        if len(combos):
            un = np.unique(nodes)
            per_node = np.array([resident_by[nodes == n].sum(axis=0) for n in un])
            node_dom = np.where(resident > 0, un[per_node.argmax(axis=0)], -1).astype(np.int16)
            ut = np.unique(types)
            per_type = np.array([resident_by[types == k].sum(axis=0) for k in ut])
            type_dom = np.where(resident > 0, ut[per_type.argmax(axis=0)], -1).astype(np.int8)
        layout = Layout(labels=t.labels, addrs=t.addrs or None,
                        bin_pages=t.mapped_pages / max(nb, 1), zoom=None,
                        key=("remote", nb, t.rebins))
        mappings = tuple(MappingRow(name, "", None, None, 0, 0, n, float("nan"))
                         for name, n in sorted(t.never_accessed.items(), key=lambda kv: -kv[1]))
        agings = max(t.harvests - prev.harvests, 1)
        return Sample(
            time=t.time, layout=layout,
            accessed=accessed_by.sum(axis=0) if len(combos) else np.zeros(nb, np.int64),
            resident=resident, node=node_dom, type=type_dom,
            idle=np.full(nb, np.nan), never=np.zeros(nb, np.int64),
            # cost_s is harvest + aging together: the status line says so (TopApp.status_text).
            harvest_s=t.cost_s, aging_s=0.0, interval=(t.time - prev.time) / agings,
            wss_pages=t.wss_pages, resident_pages=t.resident_pages, cold_pages=t.cold_pages,
            mappings=mappings, agings=agings,
        )
