"""The host label: the ServiceMonitor sets what the dashboards and alerts call the host."""

from __future__ import annotations

import json

import yaml
from conftest import ROOT


def test_servicemonitor_host_label_is_the_dashboards_instance() -> None:
    sm = yaml.safe_load((ROOT / "deploy/kubernetes/servicemonitor.yaml").read_text())
    relabel = [r for e in sm["spec"]["endpoints"] for r in e.get("relabelings", [])]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"} in relabel
    for f in sorted((ROOT / "grafana/dashboards").glob("*.json")):
        d = json.loads(f.read_text())
        names = {v["name"] for v in d["templating"]["list"]}
        assert {"job", "instance"} <= names, f.name
        text = f.read_text()
        assert "node_name" not in text, f"{f.name} groups by a label the ServiceMonitor does not set"
    process = json.loads((ROOT / "grafana/dashboards/pageheat-process.json").read_text())
    [pid] = [v for v in process["templating"]["list"] if v["name"] == "pid"]
    assert pid["multi"] is False and pid["includeAll"] is False, "one process by default, not All"


def test_serve_config_check_fleet_settings(tmp_path) -> None:
    """targets.all / targets.cgroups from the environment and the file reach the effective
    settings; a bad pattern or window is one line and exit 2."""
    from cli_helpers import clean_env
    from conftest import run_pageheat

    env = clean_env(PAGEHEAT_TARGETS__ALL="true", PAGEHEAT_TARGETS__CGROUPS='["/kubepods.slice/**"]')
    r = run_pageheat("serve", "--config.check", env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    eff = yaml.safe_load(r.stdout)
    assert eff["targets"]["all"] is True and eff["targets"]["cgroups"] == ["/kubepods.slice/**"]
    assert eff["per_process_series_top"] == 10 and eff["working_set_windows"] == [60.0, 300.0]
    for text, field in (("targets: {cgroups: ['kubepods/*']}\n", "targets.cgroups"),
                        ("working_set_windows: [90s]\n", "working_set_windows"),
                        ("targets: {all: sometimes}\n", "targets.all")):
        cfg = tmp_path / "c.yml"
        cfg.write_text(text)
        r = run_pageheat("serve", "--config.file", str(cfg), "--config.check", env=clean_env(), timeout=60)
        assert r.returncode == 2, (text, r.stdout)
        [line] = r.stderr.splitlines()
        assert field in line and "Traceback" not in r.stderr, line
