"""`pageheat render --instance/--job`: a pid is unique per host only. With the same pid on two
exporters in one Prometheus, render without a selector refuses (one line, exit 1) instead of
summing unrelated processes; with --job it draws the one asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_pageheat, stop_process
from test_exporter_prometheus import start_serve, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.prometheus]


def test_render_selects_one_exporter(ptwalk_ok, workload, prometheus_server, tmp_path: Path) -> None:
    t = workload("--size", "16MiB", "--hot", "0.2", "--warm", "0")
    serve, port, log = start_serve(tmp_path, f"targets: {{pids: [{t.pid}], top_rss: 0}}\n"
                                             "aging: 500ms\ndiscovery_interval: 500ms\n")
    try:
        # The same exporter under two jobs: to Prometheus, two exporters with the same pid.
        prom = prometheus_server("".join(f"""
  - job_name: {job}
    static_configs: [{{targets: ['127.0.0.1:{port}']}}]
""" for job in ("pageheat", "pageheat-b")))
        # Two samples of each job inside the 5 s rate window: render's rate needs them.
        wait_for(lambda: len(prom.query(
            f'count_over_time(pageheat_harvests_total{{pid="{t.pid}"}}[5s]) >= 2')) == 2, 60,
            "both jobs scraped twice within the rate window")
        common = ("render", "--prometheus", prom.url, "--pid", str(t.pid), "--range", "30s",
                  "--step", "1s", "--rate-interval", "5s")
        r = run_pageheat(*common)
        assert r.returncode == 1, r.stdout
        [line] = r.stderr.splitlines()
        assert f"pid {t.pid} is on 2 exporters" in line and "pageheat-b" in line and "--instance" in line
        r = run_pageheat(*common, "--job", "pageheat", "--instance", f"127.0.0.1:{port}")
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("\n") >= 10
        r = run_pageheat(*common, "--job", "nope")
        assert r.returncode == 1
        [line] = r.stderr.splitlines()
        assert f"no pageheat data for pid {t.pid} job 'nope'" in line
    finally:
        stop_process(serve)
    assert "Traceback" not in log.read_text()


def test_render_image_format_and_rate_window(ptwalk_ok, workload, prometheus_server, tmp_path: Path) -> None:
    """--png writes a PNG and --svg an SVG whatever the file's name ends with, through a
    temporary file of its own: a directory is refused (one line, exit 2) and nothing else in
    the folder is written or left behind."""
    import xml.etree.ElementTree as ET

    t = workload("--size", "16MiB", "--hot", "0.2", "--warm", "0")
    serve, port, log = start_serve(tmp_path, f"targets: {{pids: [{t.pid}], top_rss: 0}}\n"
                                             "aging: 500ms\ndiscovery_interval: 500ms\n")
    try:
        prom = prometheus_server(f"""
  - job_name: pageheat
    static_configs: [{{targets: ['127.0.0.1:{port}']}}]
""")
        wait_for(lambda: prom.query(f'count_over_time(pageheat_harvests_total{{pid="{t.pid}"}}[5s]) >= 2'),
                 60, "scraped twice within the rate window")
        common = ("render", "--prometheus", prom.url, "--pid", str(t.pid), "--range", "30s",
                  "--step", "1s", "--rate-interval", "5s")
        out = tmp_path / "out"
        out.mkdir()
        (out / "x.tmp").write_text("a sibling")  # what a name.tmp scheme would overwrite
        (out / "old.png").write_text("replaced")
        (out / "dir").mkdir()
        png_magic = b"\x89PNG\r\n\x1a\n"  # the PNG signature (RFC 2083)
        for flag, name in [("--png", "heat-2026.12.01"), ("--png", "x.xyz"), ("--png", "heat.png.bak"),
                           ("--svg", "x.png"), ("--png", "x"), ("--png", "old.png")]:
            r = run_pageheat(*common, flag, str(out / name))
            assert r.returncode == 0, (name, r.stderr)
            body = (out / name).read_bytes()
            if flag == "--png":
                assert body.startswith(png_magic), name
            else:
                assert ET.fromstring(body).tag == "{http://www.w3.org/2000/svg}svg", name
        for flag, name in [("--png", "dir"), ("--svg", "dir"), ("--png", "nowhere/x.png")]:
            r = run_pageheat(*common, flag, str(out / name))
            assert r.returncode == 2, (name, r.stdout)
            [line] = r.stderr.splitlines()
            assert line.startswith(f"pageheat: {flag} {out / name}: "), line
        assert (out / "x.tmp").read_text() == "a sibling"
        assert sorted(p.name for p in out.iterdir()) == sorted(
            ["x.tmp", "old.png", "dir", "heat-2026.12.01", "x.xyz", "heat.png.bak", "x.png", "x"])
        assert list((out / "dir").iterdir()) == []
        # A window that is not whole seconds is one Prometheus takes: PromQL has no fractions
        # ('2.5s' was a 400), so render writes it in ms.
        for window in ("2500ms", "2.5s"):
            r = run_pageheat(*common[:-1], window)
            assert r.returncode == 0, r.stderr
            assert r.stdout.count("\n") >= 10
    finally:
        stop_process(serve)
    assert "Traceback" not in log.read_text()
