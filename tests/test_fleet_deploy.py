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
