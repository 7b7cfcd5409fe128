"""serve on several listen addresses and a chosen telemetry path (issue 15's exporter flags).

Needs the HTTP server of the http branch (HttpServer.start(addresses), metrics_path)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from cli_helpers import clean_env, scrape
from conftest import PAGEHEAT, free_port, stop_process, wait_http


@pytest.mark.kernel
@pytest.mark.parametrize("how", ["flags", "env"])
def test_serve_on_two_addresses_with_a_telemetry_path(ptwalk_ok, workload, how: str) -> None:
    import subprocess

    t = workload("--size", "16MiB")
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    addresses = [f"127.0.0.1:{p}" for p in ports]
    env = clean_env()
    args = [*PAGEHEAT, "serve", "--pid", str(t.pid), "--aging", "200ms"]
    if how == "flags":
        args += ["--web.listen-address", addresses[0], "--web.listen-address", addresses[1],
                 "--web.telemetry-path", "/prom"]
    else:
        env |= {"PAGEHEAT_LISTEN": f'["{addresses[0]}", "{addresses[1]}"]',
                "PAGEHEAT_TELEMETRY_PATH": "/prom"}
    serve = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        for port in ports:
            wait_http(f"http://127.0.0.1:{port}/prom")
            assert scrape(port, "/prom")["pageheat_build_info"][0].labels["source"] == "ptwalk"
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
            assert e.value.code == 404
    finally:
        stop_process(serve)


@pytest.mark.kernel
def test_an_address_that_cannot_be_bound_is_named_in_one_line(ptwalk_ok, workload) -> None:
    """A port another listener holds, and a host name that does not resolve: one line that
    names the address, exit 1, and nothing left listening."""
    import socket
    import subprocess

    t = workload("--size", "16MiB")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for address in (f"127.0.0.1:{port}", f"nosuchhost.invalid:{free_port()}"):
            r = subprocess.run([*PAGEHEAT, "serve", "--pid", str(t.pid), "--web.listen-address", address,
                                "--log.level", "error"], env=clean_env(), capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 1, r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"pageheat: cannot listen on {address}: "), lines
