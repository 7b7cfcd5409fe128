"""`pageheat serve` end to end over HTTP: malformed requests get an answer and serve goes on,
HEAD, gzip, the landing page, the JSON API's pid filter, and a cached /metrics that still
follows every harvest (the daemon bumps the generation)."""

from __future__ import annotations

import gzip
import json
import subprocess
import urllib.error
import urllib.request

import pytest
from conftest import PAGEHEAT, free_port, stop_process, wait_http
from httpserver_helpers import parse, raw
from pageheat import __version__
from prometheus_client.parser import text_string_to_metric_families
from test_exporter_prometheus import wait_for

pytestmark = pytest.mark.kernel


@pytest.fixture
def served(ptwalk_ok, workload, tmp_path):
    t = workload("--size", "16MiB")
    port = free_port()
    cfg = tmp_path / "pageheat.yml"
    cfg.write_text(f"targets: {{pids: [{t.pid}], top_rss: 0}}\naging: 300ms\n")
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([*PAGEHEAT, "serve", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield port, t
    finally:
        stop_process(proc)
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text, text


def harvests(text: str, pid: int) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "pageheat_harvests_total" and s.labels.get("pid") == str(pid):
                return s.value
    return 0.0


@pytest.mark.kind5
def test_serve_answers_malformed_requests(served) -> None:
    port, _ = served
    cases = [
        (b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5000))
         + b"\r\n", 431),
        (b"GET /metrics\r\n\r\n", 400),
        (bytes(range(256)) * 4 + b"\r\n\r\n", 400),
    ]
    for request, want in cases:
        status, headers, body = parse(raw(port, request))
        assert status == want and body and int(headers["content-length"]) == len(body), (status, body)
    st, h, body = parse(raw(port, b"HEAD /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
    assert st == 200 and body == b"" and int(h["content-length"]) > 1000


def test_serve_gzip_landing_page_api_and_fresh_cache(served) -> None:
    port, t = served
    url = f"http://127.0.0.1:{port}"

    def metrics(encoding: str = "") -> str:
        req = urllib.request.Request(url + "/metrics", headers={"Accept-Encoding": encoding})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
            if encoding:
                assert r.headers["Content-Encoding"] == "gzip"
                body = gzip.decompress(body)
            return body.decode()

    first = wait_for(lambda: metrics() if harvests(metrics(), t.pid) >= 1 else None, 30, "a harvest")
    # Harvests go on and the cached exposition follows them, gzipped or not.
    wait_for(lambda: harvests(metrics("gzip"), t.pid) >= harvests(first, t.pid) + 2, 30,
             "two more harvests in the gzipped exposition")
    wait_for(lambda: harvests(metrics(), t.pid) >= harvests(first, t.pid) + 3, 30,
             "three more harvests in the plain exposition")

    with urllib.request.urlopen(url + "/", timeout=10) as r:
        page = r.read().decode()
    assert __version__ in page and 'href="/metrics"' in page and 'href="/api/v1/heat"' in page

    heat = json.load(urllib.request.urlopen(f"{url}/api/v1/heat?pid={t.pid}", timeout=10))
    assert [x["pid"] for x in heat["targets"]] == [t.pid]
    assert json.load(urllib.request.urlopen(f"{url}/api/v1/heat?pid=1", timeout=10))["targets"] == []
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{url}/api/v1/targets?pid=x", timeout=10)
    assert e.value.code == 400 and e.value.read().startswith(b"pid: expected a process id")
