"""exporter/serve/http.py on real sockets: malformed requests, HEAD, gzip, the exposition cache, the
landing page, several listen addresses, basic auth and /healthz, the JSON API's pid filter.

The server is the real HttpServer with the real collector over views the real aggregator made
from synthetic harvests (tests/httpserver_helpers.py); `pageheat serve` end to end is in
test_http_serve.py."""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import threading
import time
import urllib.error
import urllib.request

import bcrypt
import pytest
from httpserver_helpers import parse, raw, serve, synthetic_view
from pageheat import __version__
from pageheat.config import Config
from pageheat.serve.daemon import Daemon
from pageheat.serve.webconfig import WebConfig
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

GET = b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"

# Prometheus 2.42's and 3.x's Accept headers: OpenMetrics with parameters after the version.
PROMETHEUS_ACCEPT = [
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;"
    "q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;"
    "version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;"
    "q=0.3,*/*;q=0.2",
]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def pids_in(text: str) -> set[str]:
    return {s.labels["pid"] for f in text_string_to_metric_families(text) for s in f.samples
            if "pid" in s.labels}


@pytest.fixture(scope="module")
def views():
    return {100: synthetic_view(100), 200: synthetic_view(200, seed=1)}


# -- issue 11, kind 5: malformed requests get an answer ----------------------------------------
MALFORMED = {
    "20 KB header": (b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    "5000 headers": (b"GET /metrics HTTP/1.1\r\nHost: t\r\n"
                     + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n", 431),
    "200 small headers": (b"GET /metrics HTTP/1.1\r\nHost: t\r\n"
                          + b"".join(b"X%d: v\r\n" % i for i in range(200)) + b"\r\n", 431),
    "no HTTP version": (b"GET /metrics\r\n\r\n", 400),
    "binary garbage": (bytes(range(256)) * 4 + b"\r\n\r\n", 400),
    "header line without a colon": (b"GET /metrics HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n", 400),
    "HTTP/1.1 without Host": (b"GET /metrics HTTP/1.1\r\n\r\n", 400),
    "bad Content-Length": (b"GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", 400),
    "unknown HTTP version": (b"GET /metrics HTTP/7.0\r\nHost: t\r\n\r\n", 505),
    "body over 64 KiB": (b"GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"
                         + b"x" * 100000, 413),
}


@pytest.mark.kind5
@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_request_gets_status_and_body(views, name: str) -> None:
    request, want = MALFORMED[name]
    with serve(views) as s:
        status, headers, body = parse(raw(s.server.port, request))
        assert status == want, (name, status, body)
        assert body and int(headers["content-length"]) == len(body)
        assert headers["connection"] == "close"
        assert b"\x00" not in body and len(body) < 200  # short, and no echo of the request
        # The server goes on serving.
        assert parse(raw(s.server.port, GET))[0] == 200


@pytest.mark.kind5
def test_stalled_request_is_closed_not_kept(views, monkeypatch) -> None:
    import pageheat.serve.http as http

    monkeypatch.setattr(http, "REQUEST_SECONDS", 0.5)
    with serve(views) as s, socket.create_connection(("127.0.0.1", s.server.port), timeout=5) as c:
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")  # never finished
        assert c.recv(100) == b""  # closed by the server after REQUEST_SECONDS


@pytest.mark.kind5
def test_head_has_headers_and_no_body(views) -> None:
    with serve(views) as s:
        _, get_headers, get_body = parse(raw(s.server.port, GET))
        # HEAD then GET on one keep-alive connection: a body after HEAD would corrupt the
        # second answer.
        answer = raw(s.server.port, b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
        first, _, rest = answer.partition(b"\r\n\r\n")
        status, headers, _ = parse(first + b"\r\n\r\n")
        assert status == 200
        assert int(headers["content-length"]) == len(get_body)
        assert headers["content-type"] == get_headers["content-type"]
        assert rest.startswith(b"HTTP/1.1 200 ")
        assert parse(rest)[2] == get_body
        for path in ("/", "/healthz"):
            st, h, body = parse(raw(s.server.port, f"HEAD {path} HTTP/1.1\r\nHost: t\r\n"
                                                   "Connection: close\r\n\r\n".encode()))
            assert st == 200 and body == b"" and int(h["content-length"]) > 0


def test_method_other_than_get_or_head(views) -> None:
    with serve(views) as s:
        st, h, body = parse(raw(s.server.port, b"POST /metrics HTTP/1.1\r\nHost: t\r\n"
                                               b"Content-Length: 3\r\nConnection: close\r\n\r\nabc"))
        assert st == 405 and h["allow"] == "GET, HEAD" and body


def test_keep_alive_serves_several_requests(views) -> None:
    with serve(views) as s:
        two = raw(s.server.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * 2 + GET)
        assert two.count(b"HTTP/1.1 200 ") == 3


# -- issue 13, goal 4: gzip and the exposition cache -------------------------------------------
@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0", *PROMETHEUS_ACCEPT])
def test_gzip_decodes_to_the_same_exposition(views, accept: str) -> None:
    with serve(views) as s:
        _, plain_h, plain = get(s.url + "/metrics", {"Accept": accept})
        st, h, body = get(s.url + "/metrics", {"Accept": accept, "Accept-Encoding": "gzip, deflate"})
        assert st == 200 and h["content-encoding"] == "gzip" and h["content-type"] == plain_h["content-type"]
        assert "accept-encoding" in h["vary"].lower()
        assert gzip.decompress(body) == plain
        assert len(body) < len(plain) / 3
        if accept:
            assert plain.endswith(b"# EOF\n") and plain.count(b"# EOF") == 1
        # gzip refused (q=0), or not asked for: identity.
        for enc in ("gzip;q=0", "br", "identity"):
            st, h, body = get(s.url + "/metrics", {"Accept": accept, "Accept-Encoding": enc})
            assert "content-encoding" not in h and body == plain


def test_cache_serves_same_bytes_until_generation_changes(views) -> None:
    with serve(dict(views)) as s:
        first = get(s.url + "/metrics")[2]
        gz = get(s.url + "/metrics", {"Accept-Encoding": "gzip"})[2]
        for _ in range(5):
            assert get(s.url + "/metrics")[2] == first
            assert get(s.url + "/metrics", {"Accept-Encoding": "gzip"})[2] == gz
        assert s.server.encodings == 1
        assert pids_in(first.decode()) == {"100", "200"}

        # Views change without a new generation: still the cached body (the daemon always bumps).
        s.views = {300: synthetic_view(300, seed=3)}
        assert get(s.url + "/metrics")[2] == first
        s.bump()
        second = get(s.url + "/metrics")[2]
        assert second != first and pids_in(second.decode()) == {"300"}
        assert gzip.decompress(get(s.url + "/metrics", {"Accept-Encoding": "gzip"})[2]) == second
        assert s.server.encodings == 2
        # OpenMetrics is cached beside the text format, not instead of it.
        om = get(s.url + "/metrics", {"Accept": "application/openmetrics-text"})[2]
        assert om.endswith(b"# EOF\n") and s.server.encodings == 3
        assert get(s.url + "/metrics")[2] == second and s.server.encodings == 3


def test_concurrent_scrapers_share_one_encoding(views) -> None:
    with serve(dict(views)) as s:
        for gen in range(3):
            s.bump()
            bodies: list[bytes] = []

            def scrape(bodies: list[bytes] = bodies) -> None:
                bodies.append(get(s.url + "/metrics", {"Accept-Encoding": "gzip"})[2])

            threads = [threading.Thread(target=scrape) for _ in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(bodies) == 10 and len(set(bodies)) == 1
            assert s.server.encodings == gen + 1


@pytest.mark.kind5
def test_client_chosen_content_types_do_not_grow_the_cache(views) -> None:
    """prometheus_client echoes the client's version= parameter in the content type: the
    cache keeps at most MAX_CACHED_TYPES of them, and an unparsable version gets the text
    format instead of a 500."""
    from pageheat.serve.http import MAX_CACHED_TYPES

    with serve(dict(views)) as s:
        for i in range(3 * MAX_CACHED_TYPES):
            st, headers, body = get(s.url + "/metrics",
                                    {"Accept": f"application/openmetrics-text; version=1.0.0.{i}"})
            assert st == 200 and body.endswith(b"# EOF\n")
        assert len(s.server._cache) <= MAX_CACHED_TYPES
        st, headers, body = get(s.url + "/metrics", {"Accept": "application/openmetrics-text; version=1.x"})
        assert st == 200 and headers["content-type"].startswith("text/plain")
        assert pids_in(body.decode()) == {"100", "200"}


def test_uncached_server_encodes_every_scrape(views) -> None:
    with serve(views, cached=False) as s:
        a = get(s.url + "/metrics")[2]
        b = gzip.decompress(get(s.url + "/metrics", {"Accept-Encoding": "gzip"})[2])
        assert a == b and s.server.encodings == 2


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text", *PROMETHEUS_ACCEPT])
def test_live_registry_is_fresh_at_every_scrape(views, accept: str) -> None:
    live = CollectorRegistry()
    c = Counter("live_things", "changes between generations", registry=live)
    with serve(views, live=live) as s:
        bodies = []
        for i in range(3):
            c.inc()
            plain = get(s.url + "/metrics", {"Accept": accept})[2]
            gz = get(s.url + "/metrics", {"Accept": accept, "Accept-Encoding": "gzip"})[2]
            assert gzip.decompress(gz) == plain
            assert f"live_things_total {i + 1}.0".encode() in plain
            if accept:
                assert plain.endswith(b"# EOF\n") and plain.count(b"# EOF") == 1, plain[-300:]
                from prometheus_client.openmetrics.parser import text_string_to_metric_families as om

                assert any(f.name == "live_things" for f in om(plain.decode()))
            bodies.append(plain)
        assert s.server.encodings == 1
        assert all(b"pageheat_resident_pages{" in b for b in bodies)


# -- issue 15: landing page, telemetry path, several addresses ---------------------------------
def test_landing_page_links(views) -> None:
    api = {"/api/v1/targets": lambda q: asyncio.sleep(0, []), "/api/v1/heat": lambda q: asyncio.sleep(0, {})}
    with serve(views, metrics_path="/x/telemetry", api=api) as s:
        st, h, body = get(s.url + "/")
        page = body.decode()
        assert st == 200 and h["content-type"].startswith("text/html")
        assert __version__ in page
        for href in ("/x/telemetry", "/api/v1/targets", "/api/v1/heat", "/healthz", "#readme"):
            assert f'href="{href}' in page or href in page, href
        assert get(s.url + "/x/telemetry")[0] == 200
        assert b"pageheat_resident_pages{" in get(s.url + "/x/telemetry")[2]
        assert get(s.url + "/metrics")[0] == 404
        for path in ("/api/v1/targets", "/api/v1/heat"):
            assert get(s.url + path)[0] == 200


def test_two_listen_addresses(views) -> None:
    with serve(views, addresses=[("127.0.0.1", 0), ("127.0.0.2", 0)]) as s:
        ports = s.server.ports
        assert len(ports) == 2 and s.server.port == ports[0]
        for host, port in zip(("127.0.0.1", "127.0.0.2"), ports, strict=True):
            st, _, body = get(f"http://{host}:{port}/metrics")
            assert st == 200 and b"pageheat_resident_pages{" in body
        # Each address answers on its own host only.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", ports[0]), timeout=2).close()


def test_address_in_use_is_an_error_and_binds_nothing(views) -> None:
    with serve(views) as s:
        from pageheat.serve.http import HttpServer

        other = HttpServer(CollectorRegistry(), WebConfig())

        async def start() -> None:
            await other.start([("127.0.0.1", 0), ("127.0.0.1", s.server.port)])

        with pytest.raises(OSError):
            asyncio.run(start())
        assert other._servers == []


# -- basic auth and /healthz --------------------------------------------------------------------
@pytest.mark.kind5
def test_healthz_is_the_only_path_without_credentials(views) -> None:
    """The documented choice (README, Configuration, "TLS and basic auth"): /healthz answers
    without credentials, for liveness probes; every other path, the landing page and unknown
    paths too, asks for them."""
    user, password = "alice", "s3cret"
    web = WebConfig(users={user: bcrypt.hashpw(password.encode(), bcrypt.gensalt(4))})
    api = {"/api/v1/heat": lambda q: asyncio.sleep(0, {"ok": 1})}
    token = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    with serve(views, web=web, api=api) as s:
        assert get(s.url + "/healthz") == (200, get(s.url + "/healthz")[1], b"ok\n")
        for path in ("/", "/metrics", "/api/v1/heat", "/no/such/path"):
            st, h, body = get(s.url + path)
            assert st == 401 and h["www-authenticate"].startswith("Basic ") and body, path
            assert get(s.url + path, {"Authorization": token})[0] == (404 if path == "/no/such/path"
                                                                       else 200)
        assert get(s.url + "/metrics", {"Authorization": token[:-2] + "xx"})[0] == 401
        st, h, body = parse(raw(s.server.port, b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n"
                                               b"Connection: close\r\n\r\n"))
        assert st == 401 and body == b""


# -- issue 11: the JSON API filters ?pid= on the server --------------------------------------------
class _NoSource:
    name = "synthetic"


@pytest.fixture
def daemon(views):
    d = Daemon(Config(), _NoSource())  # type: ignore[arg-type]
    d.views = dict(views)
    yield d
    d._worker.shutdown()


def test_api_filters_by_pid(daemon) -> None:
    api = {"/api/v1/targets": daemon._api_targets, "/api/v1/heat": daemon._api_heat}
    with serve(daemon.views, api=api) as s:
        import json

        heat = json.loads(get(s.url + "/api/v1/heat")[2])
        assert sorted(t["pid"] for t in heat["targets"]) == [100, 200]
        heat = json.loads(get(s.url + "/api/v1/heat?pid=200")[2])
        assert [t["pid"] for t in heat["targets"]] == [200]
        assert json.loads(get(s.url + "/api/v1/heat?pid=999")[2])["targets"] == []
        assert [t["pid"] for t in json.loads(get(s.url + "/api/v1/targets?pid=100")[2])] == [100]
        # "9" * 5000: past Python's int max-digits limit, int() would raise ValueError (a 500).
        for bad in ("abc", "-1", "0", "1e3", "", "%C3%A9", "99999999999", "9" * 5000):
            st, _, body = get(s.url + f"/api/v1/heat?pid={bad}")
            assert st == 400 and body.startswith(b"pid: expected a process id"), (bad, body)


def test_failing_handler_is_a_500_and_the_server_goes_on(views, caplog) -> None:
    async def broken(query):
        raise RuntimeError("boom")

    with serve(views, api={"/api/v1/broken": broken}) as s:
        st, _, body = get(s.url + "/api/v1/broken")
        assert st == 500 and body == b"internal server error\n"
        assert get(s.url + "/metrics")[0] == 200
    assert any("RuntimeError: boom" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("path", ["/", "/healthz", "/api/v1/heat", "metrics"])
def test_telemetry_path_cannot_hide_another_path(path: str) -> None:
    from pageheat.serve.http import HttpServer

    with pytest.raises(ValueError, match="telemetry path"):
        HttpServer(CollectorRegistry(), WebConfig(), {"/api/v1/heat": lambda q: asyncio.sleep(0)}, path)


@pytest.mark.parametrize(("header", "want"), [
    ("gzip", True), ("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.8", True), ("GZIP", True),
    ("x-gzip", True), ("gzip;q=0", False), ("gzip;q=0.0", False), ("gzip;q=bogus", False),
    ("", False), ("identity", False), ("*", False), ("deflate", False),
])
def test_accept_encoding_parsing(header: str, want: bool) -> None:
    from pageheat.serve.http import _accepts_gzip

    assert _accepts_gzip(header) is want


def test_connections_past_the_limit_are_closed_and_counted(views, caplog) -> None:
    """Idle keep-alive connections cannot use up serve's descriptors: past max_connections,
    new ones are closed unanswered, counted, logged once; the open ones are still served."""
    live = CollectorRegistry()
    with serve(views, live=live, max_connections=8) as s:
        held = [socket.create_connection(("127.0.0.1", s.server.port), timeout=10) for _ in range(8)]
        try:
            for c in held:  # each one answered, then kept open (keep-alive)
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                assert c.recv(4096).startswith(b"HTTP/1.1 200 ")
            for _ in range(3):
                assert raw(s.server.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n") == b""
            assert caplog.text.count("the most serve keeps") == 1
            held[0].sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            assert held[0].recv(65536).startswith(b"HTTP/1.1 200 ")
        finally:
            for c in held:
                c.close()
        deadline = time.monotonic() + 10
        while True:  # the server sees the closes
            text = get(s.url + "/metrics")[2].decode()
            if "pageheat_http_connections 1.0" in text:
                break
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.05)
        assert "pageheat_http_connections_refused_total 3.0" in text
        assert "pageheat_http_max_connections 8.0" in text
