"""The HTTP service of `pageheat serve`: the telemetry path (``/metrics`` by default), a landing
page at ``/``, ``/healthz`` and the JSON API, on one or more listen addresses, with the TLS and
basic auth of the web-config file.

HTTP/1.1 itself (request parsing, framing, keep-alive, HEAD, the 400/431 answers to malformed
requests) is h11's; this module only routes (see docs/ARCHITECTURE.md, "HTTP", for why not
aiohttp). The exposition is encoded once per *generation* (a counter the daemon bumps whenever
its views or stats change) and per content type, off the event loop; scrapes in between are
served from that cache, gzipped once too when a scraper asks for it.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import resource
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
from pageheat import __version__
from pageheat.serve.webconfig import WebConfig
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

# A handler of the JSON API gets the query parameters (last value wins) and returns what
# json.dumps takes. It raises BadRequest for parameters it cannot use.
Handler = Callable[[Mapping[str, str]], Awaitable[object]]

MAX_HEADER_BYTES = 16384  # request line + headers; more: 431
MAX_HEADERS = 100  # header fields; more: 431 (Go's net/http allows 1 MiB, nginx 8 KiB lines)
MAX_BODY_BYTES = 65536  # GET and HEAD have no use for a body; more: 413
REQUEST_SECONDS = 10.0  # to receive one whole request once the connection is open or reused
IDLE_SECONDS = 60.0  # keep-alive: a scraper's connection may wait this long for its next request
# On a 950 KiB exposition of 10,000 series (bench/scrape.py's): level 1 takes 2 ms for 71 KiB,
# 6 (zlib's default) 39 ms for 58 KiB, 9 (gzip.compress's default) 203 ms for 49 KiB.
GZIP_LEVEL = 1
# Cached expositions, one per negotiated content type (text, OpenMetrics and its variants).
MAX_CACHED_TYPES = 8
HEALTHZ = "/healthz"
DOCS_URL = "https://github.com/pageheat/pageheat#readme"
_EOF = b"# EOF\n"
OPENMETRICS_MEDIA = "application/openmetrics-text"
# Open connections at once, at most; more are closed as they come. Idle keep-alive connections
# hold a descriptor each for IDLE_SECONDS: without a cap, a client could use up the process's
# descriptors, and harvests (a BPF iterator, /proc files) would fail. A quarter of the soft
# RLIMIT_NOFILE (serve raises it to the hard limit first, as Go programs do), at most this.
MAX_CONNECTIONS = 1024
REFUSED_LOG_SECONDS = 60.0  # one log line per this long while connections are refused


def connection_limit() -> int:
    """MAX_CONNECTIONS, or a quarter of the soft descriptor limit if that is lower (>= 16)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(16, min(MAX_CONNECTIONS, soft // 4))


class BadRequest(ValueError):
    """A request the server understood but cannot serve: answered 400 with this message."""


@dataclass
class _Exposition:
    """One registry encoding, for one content type, valid for one generation.

    text: the registry's exposition without OpenMetrics' closing ``# EOF`` (a live registry's
    part and the EOF follow it). The gzip side is made once, by ``deflate``, off the loop.
    """

    generation: int
    text: bytes
    eof: bytes  # b"# EOF\n" for OpenMetrics, else b""
    _deflate: Any = None  # zlib compressor after ``text``, sync-flushed
    _gz_text: bytes = b""  # what it emitted for ``text``
    _gz_whole: bytes = b""  # gzip of text + eof: the body when no live registry follows

    @property
    def deflated(self) -> bool:
        return self._deflate is not None

    def deflate(self) -> _Exposition:
        c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: gzip header and trailer
        self._gz_text = c.compress(self.text) + c.flush(zlib.Z_SYNC_FLUSH)
        end = c.copy()
        self._gz_whole = self._gz_text + end.compress(self.eof) + end.flush()
        self._deflate = c
        return self

    def gzipped(self, tail: bytes | None) -> bytes:
        """gzip of text + tail (None: + eof). A fresh tail costs only its own compression:
        the compressor's state after ``text`` is copied, not rebuilt."""
        if tail is None:
            return self._gz_whole
        end = self._deflate.copy()
        return self._gz_text + end.compress(tail) + end.flush()


class HttpServer:
    """Serves one registry and the JSON API on one or more addresses.

    registry: encoded at most once per value of ``generation()`` and content type; every
    collector in it must change only when the generation changes. ``generation`` None: encode
    at every scrape (the behaviour before the cache; bench/scrape.py compares both).
    live: collectors that change on their own (process_* self metrics): encoded at every scrape
    and appended to the cached exposition.
    """

    def __init__(self, registry: CollectorRegistry, web: WebConfig,
                 api: dict[str, Handler] | None = None, metrics_path: str = "/metrics", *,
                 generation: Callable[[], int] | None = None,
                 live: CollectorRegistry | None = None, max_connections: int | None = None) -> None:
        self.registry = registry
        self.web = web
        self.api = api or {}
        if metrics_path in ("/", HEALTHZ, *self.api) or not metrics_path.startswith("/"):
            raise ValueError(f"telemetry path {metrics_path!r}: must start with / and not be "
                             f"one of /, {HEALTHZ}, {', '.join(sorted(self.api))}")
        self.metrics_path = metrics_path
        self.generation = generation
        self.live = live
        self.encodings = 0  # registry encodings so far (tests and the benchmark read it)
        self._servers: list[asyncio.AbstractServer] = []
        self._cache: dict[str, _Exposition] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._connections: set[asyncio.StreamWriter] = set()
        self.max_connections = connection_limit() if max_connections is None else max_connections
        self.refused = 0  # connections closed because max_connections were open
        self._refused_logged = -REFUSED_LOG_SECONDS
        if live is not None:
            live.register(_ConnectionCollector(self))

    async def start(self, addresses: list[tuple[str, int]]) -> None:
        """Listen on every (host, port); port 0 picks a free one. Raises OSError (address in
        use, unknown host) after closing what was already bound."""
        if not addresses:
            raise ValueError("no listen address")
        try:
            for host, port in addresses:
                try:
                    self._servers.append(await asyncio.start_server(
                        self._connection, host, port, ssl=self.web.ssl_context,
                        limit=MAX_HEADER_BYTES))
                except OSError as e:  # gaierror included: name the address, not just errno
                    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    err = OSError(f"cannot listen on {where}: {e.strerror or e}")
                    err.errno = e.errno  # the message without the "[Errno N]" prefix
                    raise err from e
        except BaseException:
            await self.stop()
            raise

    @property
    def port(self) -> int:
        """The port of the first address (the one bound when port 0 was asked for)."""
        return self.ports[0]

    @property
    def ports(self) -> list[int]:
        assert self._servers, "not started"
        return [s.sockets[0].getsockname()[1] for s in self._servers]

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        # Keep-alive connections idle between scrapes would keep wait_closed() waiting (3.12+).
        for w in list(self._connections):
            w.close()
        for s in self._servers:
            await s.wait_closed()
        self._servers = []

    # -- connections -----------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            self.refused += 1
            now = time.monotonic()
            if now - self._refused_logged >= REFUSED_LOG_SECONDS:
                self._refused_logged = now
                log.warning("%d connections open, the most serve keeps: closing new ones "
                            "(pageheat_http_connections_refused_total)", len(self._connections))
            writer.close()
            return
        self._connections.add(writer)
        try:
            # The TLS handshake is done (asyncio completes it before calling us): a verified
            # client certificate without an allowed SAN is refused, as exporter-toolkit does.
            if not self.web.client_allowed(writer.get_extra_info("peercert")):
                log.warning("client certificate of %s: no subject alternative name in "
                            "client_allowed_sans; connection closed", writer.get_extra_info("peername"))
                return
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # Shutdown cancels requests in flight (one waiting for bcrypt, say). Python 3.11's
            # start_server calls task.exception() on the finished handler, which raises for a
            # cancelled task and logs a traceback; ending normally avoids that.
            pass
        except (ConnectionError, TimeoutError, OSError):
            pass  # the peer went away or stalled: nothing to answer
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        timeout = REQUEST_SECONDS
        while True:
            try:
                request = await self._next_request(conn, reader, timeout)
                if request is None:
                    return
                try:
                    status, headers, body = await self._respond(request)
                except Exception as e:  # noqa: BLE001 - a bug in a collector or handler: say so, go on
                    log.error("internal error answering %s: %s: %s",
                              request.target.decode("latin-1")[:100], type(e).__name__, e)
                    status, headers = 500, [("Content-Type", "text/plain; charset=utf-8")]
                    body = b"internal server error\n"
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint
                headers, body = [("Content-Type", "text/plain; charset=utf-8")], _error_body(status, e)
                request = None
                if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                    return
            head_only = request is not None and request.method == b"HEAD"
            headers.extend(self.web.headers)
            headers.append(("Content-Length", str(len(body))))
            if request is None:
                headers.append(("Connection", "close"))
            data = conn.send(h11.Response(status_code=status, headers=headers))
            if not head_only:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            if writer.is_closing():
                return  # the peer went away while the answer was made (a scrape timeout, say)
            writer.write(data)
            await writer.drain()
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # an error answer, "Connection: close", or HTTP/1.0
            conn.start_next_cycle()
            timeout = IDLE_SECONDS

    @staticmethod
    async def _next_request(conn: h11.Connection, reader: asyncio.StreamReader,
                            timeout: float) -> h11.Request | None:
        """The next whole request, its body read and dropped; None when the client closed.
        Raises h11.RemoteProtocolError (with the status to answer) and TimeoutError."""
        request: h11.Request | None = None
        body = 0
        async with asyncio.timeout(timeout):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(MAX_HEADER_BYTES))
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return None
                if isinstance(event, h11.Request):
                    # h11 bounds only what it must buffer; a request that arrived whole in one
                    # read is bounded here.
                    size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                    if len(event.headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
                        raise h11.RemoteProtocolError("request header fields too large", 431)
                    if event.http_version not in (b"1.0", b"1.1"):  # h11 takes any HTTP/x.y
                        raise h11.RemoteProtocolError("HTTP version not supported", 505)
                    request = event
                elif isinstance(event, h11.Data):
                    body += len(event.data)
                    if body > MAX_BODY_BYTES:
                        raise h11.RemoteProtocolError("request body too large", 413)
                elif isinstance(event, h11.EndOfMessage):
                    return request

    # -- routing --------------------------------------------------------------------------------
    async def _respond(self, request: h11.Request) -> tuple[int, list[tuple[str, str]], bytes]:
        method = request.method.decode("ascii", "replace")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        url = urlsplit(request.target.decode("latin-1"))
        path = url.path
        text = "text/plain; charset=utf-8"
        if not self.web.rate_limit.allow():  # before anything else, as exporter-toolkit's limiter
            return 429, [("Content-Type", text)], b"too many requests\n"
        if method not in ("GET", "HEAD"):
            return 405, [("Content-Type", text), ("Allow", "GET, HEAD")], b"method not allowed\n"
        if path == HEALTHZ:  # open on purpose: README, Configuration, "TLS and basic auth"
            return 200, [("Content-Type", text)], b"ok\n"
        # bcrypt is slow on purpose: check off the event loop, so scrapes and scheduling go on.
        loop = asyncio.get_running_loop()
        if self.web.users and not await loop.run_in_executor(
                None, self.web.authorized, headers.get("authorization")):
            return 401, [("Content-Type", text), ("WWW-Authenticate", 'Basic realm="pageheat"')], \
                b"unauthorized\n"
        if path == self.metrics_path:
            gzip_ok = _accepts_gzip(headers.get("accept-encoding", ""))
            ctype, body = await self.exposition(headers.get("accept", ""), gzip_ok)
            out = [("Content-Type", ctype), ("Vary", "Accept-Encoding")]
            if gzip_ok:
                out.append(("Content-Encoding", "gzip"))
            return 200, out, body
        if path in self.api:
            try:
                query = dict(parse_qsl(url.query, keep_blank_values=True))
                data = await self.api[path](query)
            except BadRequest as e:
                return 400, [("Content-Type", text)], f"{e}\n".encode()
            return 200, [("Content-Type", "application/json")], json.dumps(data).encode()
        if path == "/":
            return 200, [("Content-Type", "text/html; charset=utf-8")], self._landing()
        return 404, [("Content-Type", text)], b"not found\n"

    def _landing(self) -> bytes:
        links = [(self.metrics_path, "Metrics"), *((p, p) for p in sorted(self.api)),
                 (HEALTHZ, "Health"), (DOCS_URL, "Documentation")]
        items = "\n".join(f'<li><a href="{html.escape(href)}">{html.escape(name)}</a></li>'
                          for href, name in links)
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>pageheat</title></head>\n"
                f"<body><h1>pageheat</h1>\n<p>Version {html.escape(__version__)}</p>\n"
                f"<ul>\n{items}\n</ul>\n</body></html>\n").encode()

    # -- the exposition -------------------------------------------------------------------------
    async def exposition(self, accept: str, gzip_ok: bool) -> tuple[str, bytes]:
        """(content type, body) for a scrape with this Accept header; gzipped if gzip_ok.
        Encodes (off the loop) only when the generation changed since the cached encoding;
        concurrent scrapers wait for the one encoding under way, and gzip it once."""
        encoder, ctype = _negotiate(accept)
        # OpenMetrics ends with "# EOF", also in its variants ("; escaping=underscores", ...).
        eof = _EOF if ctype.startswith(OPENMETRICS_MEDIA) else b""
        loop = asyncio.get_running_loop()
        # The content type echoes the client's version= parameter: one cache entry per type
        # would let any client grow memory without bound. Past MAX_CACHED_TYPES, encode per scrape.
        uncached = ctype not in self._cache and len(self._cache) >= MAX_CACHED_TYPES
        if self.generation is None or uncached:  # encode (and compress) for this scrape alone
            entry = await loop.run_in_executor(None, self._encode, encoder, eof, -1, gzip_ok)
        else:
            async with self._locks.setdefault(ctype, asyncio.Lock()):
                gen = self.generation()
                entry = self._cache.get(ctype)
                if entry is None or entry.generation != gen:
                    entry = await loop.run_in_executor(None, self._encode, encoder, eof, gen, gzip_ok)
                    self._cache[ctype] = entry
                elif gzip_ok and not entry.deflated:
                    await loop.run_in_executor(None, entry.deflate)
        if self.live is None:
            return ctype, entry.gzipped(None) if gzip_ok else entry.text + eof
        # The live part is small (process_*: ~0.3 ms with its /proc reads, and 0.04 ms to
        # compress it after a copy of the cached deflate state): on the loop, which costs less
        # than a hop to a thread on a busy machine.
        return ctype, self._with_live(entry, encoder, gzip_ok)

    def _encode(self, encoder: Callable[[CollectorRegistry], bytes], eof: bytes, generation: int,
                gzip_ok: bool) -> _Exposition:
        self.encodings += 1
        text = encoder(self.registry)
        entry = _Exposition(generation, text.removesuffix(eof) if eof else text, eof)
        return entry.deflate() if gzip_ok else entry

    def _with_live(self, entry: _Exposition, encoder: Callable[[CollectorRegistry], bytes],
                   gzip_ok: bool) -> bytes:
        assert self.live is not None
        tail = encoder(self.live)  # ends with the EOF line itself (OpenMetrics)
        return entry.gzipped(tail) if gzip_ok else entry.text + tail


class _ConnectionCollector:
    """pageheat_http_connections{,_refused_total}: read at every scrape (the live registry)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server

    def collect(self):
        yield GaugeMetricFamily("pageheat_http_connections", "HTTP connections open now.",
                                value=len(self.server._connections))
        yield GaugeMetricFamily("pageheat_http_max_connections",
                                "HTTP connections open at once, at most (more are closed).",
                                value=self.server.max_connections)
        yield CounterMetricFamily("pageheat_http_connections_refused",
                                  "Connections closed unanswered because pageheat_http_max_connections "
                                  "were open.", value=self.server.refused)


def _negotiate(accept: str) -> tuple[Callable[[CollectorRegistry], bytes], str]:
    """prometheus_client's content negotiation; an Accept header it cannot parse (it raises
    TypeError for ``version=1.x``) gets the text format, as a missing one does."""
    try:
        return choose_encoder(accept)
    except (TypeError, ValueError):
        return choose_encoder("")


def _accepts_gzip(accept_encoding: str) -> bool:
    """True when Accept-Encoding lists gzip with a non-zero q (RFC 9110 12.5.3)."""
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


def _error_body(status: int, e: h11.RemoteProtocolError) -> bytes:
    """A short plain-text reason; never the request's bytes echoed back."""
    reason = {413: "request body too large", 431: "request header fields too large",
              505: "HTTP version not supported"}.get(status)
    if reason is None:
        reason = "bad request: " + str(e).split(": bytearray(")[0][:100]
    return f"{reason}\n".encode("ascii", "replace")
