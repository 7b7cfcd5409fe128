"""deploy/: Prometheus config and rules through promtool, the systemd unit, the Kubernetes
manifests, and the unit's capability set running a real ptwalk snapshot."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PAGEHEAT, ROOT, need_kernel
from pageheat.kernel import capabilities

DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
UNIT = DEPLOY / "systemd" / "pageheat.service"
K8S = DEPLOY / "kubernetes"

# Host paths the sources use besides /proc (which the DaemonSet gets through hostPID).
NEEDED_MOUNTS = {
    "/sys/fs/bpf": False,  # path: read-only is enough
    "/sys/kernel/debug": True,  # mglru-fexit writes lru_gen
    "/sys/kernel/btf": False,
    "/sys/devices/system": False,
}
ALERTS = {"PageheatColdMemoryHigh", "PageheatCgroupColdMemoryHigh", "PageheatExporterDown",
          "PageheatExporterAbsent", "PageheatHarvestOverrun", "PageheatCpuBudgetExceeded",
          "PageheatSeriesDropped", "PageheatErrors"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def rule_files() -> list[Path]:
    files = sorted((PROM / "rules").glob("*.yml"))
    assert files
    return files


# --- Prometheus -------------------------------------------------------------------------------


def test_promtool_check_config():
    r = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    # Every rule file is referenced by the example config.
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert sorted(PROM / f for f in cfg["rule_files"]) == rule_files()
    assert any(j.get("scheme") == "https" and "basic_auth" in j for j in cfg["scrape_configs"])


def test_promtool_check_rules():
    r = promtool("check", "rules", *map(str, rule_files()))
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_test_rules_cover_every_alert():
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    r = promtool("test", "rules", *map(str, tests))
    assert r.returncode == 0, r.stdout + r.stderr

    defined = {rule["alert"] for f in rule_files() for g in yaml.safe_load(f.read_text())["groups"]
               for rule in g["rules"] if "alert" in rule}
    assert defined == ALERTS
    fired, quiet = set(), set()
    for t in tests:
        for case in yaml.safe_load(t.read_text())["tests"]:
            for a in case.get("alert_rule_test", []):
                (fired if a.get("exp_alerts") else quiet).add(a["alertname"])
    assert fired == defined, f"alerts never tested firing: {defined - fired}"
    assert quiet == defined, f"alerts never tested staying quiet: {defined - quiet}"


def test_recording_rules_present():
    records = {rule["record"] for f in rule_files() for g in yaml.safe_load(f.read_text())["groups"]
               for rule in g["rules"] if "record" in rule}
    assert {"pageheat:cold_ratio_120s:ratio", "pageheat:cold_ratio_600s:ratio",
            "pageheat:working_set_bytes:sum"} <= records


# --- systemd ----------------------------------------------------------------------------------


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # keys are case-sensitive
    cp.read_string(UNIT.read_text())
    return cp


def unit_caps(key: str) -> set[str]:
    return set(unit()["Service"][key].split())


def test_unit_sandboxing_and_capabilities():
    s = unit()["Service"]
    assert s["ProtectSystem"] == "strict"
    assert s["ProtectHome"] == "yes"
    assert s["PrivateTmp"] == "yes"
    assert s["NoNewPrivileges"] == "yes"
    assert s.get("ProtectProc", "default") == "default" and s.get("ProcSubset", "all") == "all"
    for key in ("InaccessiblePaths", "TemporaryFileSystem"):
        assert not any(p.lstrip("-") in ("/proc", "/sys") or p.lstrip("-").startswith(("/proc/", "/sys/"))
                       for p in s.get(key, "").split()), key
    want = {capabilities.NAMES[c] for c in capabilities.PTWALK}
    assert unit_caps("CapabilityBoundingSet") == want
    assert unit_caps("AmbientCapabilities") == want
    # mglru-fexit writes /sys/kernel/debug/lru_gen; everything else in /sys stays read-only.
    assert "/sys/kernel/debug" in s["ReadWritePaths"]
    assert s["ExecStart"].split()[1] == "serve"


def test_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
    # verify insists that ExecStart exists: point it at this checkout's pageheat.
    pageheat = Path(shutil.which("pageheat") or ROOT / ".venv/bin/pageheat")
    assert pageheat.exists()
    copy = tmp_path / "pageheat.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/pageheat", str(pageheat)))
    r = subprocess.run([exe, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                       timeout=60)
    # verify exits 0 on unknown keys and bad values, but says so on stderr.
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@pytest.mark.kernel
@pytest.mark.least_privilege
def test_unit_capabilities_run_ptwalk(ptwalk_ok, workload):
    """Exactly the unit's capabilities, as the unit grants them (root without the rest:
    noroot securebits, bounding set, ambient set, no_new_privs), run a real snapshot."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv is not installed (util-linux)")
    t = workload("--size", "16MiB")
    caps = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}"
                               for c in sorted(unit_caps("AmbientCapabilities")))])
    pageheat = PAGEHEAT
    if unit()["Service"].get("MemoryDenyWriteExecute") == "yes":
        # The same promise from the kernel: prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), 6.3+.
        pageheat = [sys.executable, "-c", MDWE_MAIN]
        probe = subprocess.run([sys.executable, "-c", MDWE_PROBE], capture_output=True, timeout=30)
        if probe.returncode != 0:
            need_kernel("prctl(PR_SET_MDWE) is not supported (kernel 6.3+)")
    secbits = ",".join(f"+{b.replace('-', '_')}" for b in unit()["Service"]["SecureBits"].split())
    assert "+noroot" in secbits.split(",")
    cmd = [setpriv, "--securebits", secbits, "--bounding-set", caps,
           "--inh-caps", caps, "--ambient-caps", caps, "--no-new-privs",
           *pageheat, "snapshot", "--source", "ptwalk", "--pid", str(t.pid), "--scans", "2",
           "--aging", "200ms", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    assert snap["scans"] == 2 and not snap["exited"]
    assert sum(v["resident"] for v in snap["vmas"]) >= t.pages

    # And one capability fewer that loading needs is refused with one line naming it. (Without
    # CAP_SYS_PTRACE / CAP_DAC_OVERRIDE pageheat still loads and follows the processes it may
    # read and age, and names the capability for any other: tests/test_realworld_proc.py.)
    fewer = caps.replace(",+bpf", "")
    r = subprocess.run([fewer if a == caps else a for a in cmd], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "CAP_BPF" in r.stderr, r.stderr


# --- Kubernetes -------------------------------------------------------------------------------


MDWE_PROBE = "import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)"
MDWE_MAIN = ("import ctypes, sys\nassert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0\n"
             "from pageheat.cli import main\nsys.exit(main(sys.argv[1:]))")


_RENDERED: list[dict] = []


def rendered() -> list[dict]:
    """The objects `kubectl kustomize deploy/kubernetes` renders: what a cluster would get."""
    if not _RENDERED:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.fail("kubectl is not installed")
        r = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        _RENDERED.extend(d for d in yaml.safe_load_all(r.stdout) if d)
    return _RENDERED


def manifests() -> dict[str, dict]:
    """The rendered objects by kind; "ConfigMap" is pageheat's configuration (the dashboards'
    ConfigMaps are in dashboard_configmaps())."""
    docs = {}
    for d in rendered():
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"].get("labels", {}):
            continue
        assert d["kind"] not in docs, f"two {d['kind']} objects"
        docs[d["kind"]] = d
    return docs


def dashboard_configmaps() -> list[dict]:
    return [d for d in rendered() if d["kind"] == "ConfigMap"
            and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]


def project_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def sys_paths_in_code() -> set[str]:
    found = set()
    for f in (ROOT / "exporter").rglob("*.py"):
        found |= set(re.findall(r'"(/sys/[^"]+)"', f.read_text()))
    assert "/sys/kernel/debug/lru_gen" in found  # the scan itself works
    return found


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == sorted(f.name for f in K8S.glob("*.yaml")
                                            if f.name != "kustomization.yaml")


def test_daemonset():
    m = manifests()
    assert {"Namespace", "ConfigMap", "DaemonSet", "Service", "ServiceMonitor",
            "PrometheusRule"} <= set(m)
    ds = m["DaemonSet"]
    assert ds["apiVersion"] == "apps/v1"
    spec = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"][
        "labels"].items()
    assert spec["hostPID"] is True
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc.get("privileged", False) is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    want = {capabilities.NAMES[x].removeprefix("CAP_") for x in capabilities.PTWALK}
    assert set(sc["capabilities"]["add"]) == want

    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {mt["mountPath"]: mt for mt in c["volumeMounts"]}
    for path, writable in NEEDED_MOUNTS.items():
        assert path in mounts, f"{path} not mounted"
        mt = mounts[path]
        assert volumes[mt["name"]]["hostPath"]["path"] == path
        if writable:
            assert not mt.get("readOnly", False), f"{path} must be writable"
    for path in ("/sys/kernel/btf", "/sys/devices/system"):
        assert mounts[path].get("readOnly") is True, f"{path} should be read-only"
    # Every /sys path the exporter's code names is under a host mount (the container's own
    # /sys is read-only and has no debugfs).
    for path in sys_paths_in_code():
        assert any(path == m or path.startswith(m + "/") for m in mounts), f"{path} not mounted"

    port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    assert port == 9476
    assert c["args"][0] == "serve"
    cfg_mount = mounts["/etc/pageheat"]
    assert volumes[cfg_mount["name"]]["configMap"]["name"] == m["ConfigMap"]["metadata"]["name"]
    assert "--config" in c["args"] and "/etc/pageheat/pageheat.yml" in c["args"]
    assert "pageheat.yml" in m["ConfigMap"]["data"]


def test_configmap_is_a_valid_pageheat_config(tmp_path):
    from pageheat import config

    f = tmp_path / "pageheat.yml"
    f.write_text(manifests()["ConfigMap"]["data"]["pageheat.yml"])
    cfg = config.load(f, {})
    assert cfg.listen.endswith(":9476")


def test_systemd_example_config_is_the_configmaps(tmp_path):
    """The unit's example /etc/pageheat/pageheat.yml: valid, and the DaemonSet's settings."""
    from pageheat import config

    example = DEPLOY / "systemd" / "pageheat.yml"
    assert "/etc/pageheat/pageheat.yml" in unit()["Service"]["ExecStart"]
    assert yaml.safe_load(example.read_text()) == yaml.safe_load(
        manifests()["ConfigMap"]["data"]["pageheat.yml"])
    assert config.load(example, {}).listen.endswith(":9476")


def test_service_and_servicemonitor_select_the_daemonset():
    m = manifests()
    labels = m["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    svc = m["Service"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert {p["name"] for p in svc["spec"]["ports"]} == {"metrics"}
    sm = m["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"]
    ns = m["Namespace"]["metadata"]["name"]
    assert {d["metadata"]["namespace"] for k, d in m.items() if k != "Namespace"} == {ns}


def test_readme_documents_each_capability():
    text = (DEPLOY / "README.md").read_text()
    for c in capabilities.PTWALK:
        assert capabilities.NAMES[c] in text
    assert "/sys/kernel/debug/lru_gen" in text and "mglru-fexit" in text


def test_kubernetes_labels_node_selector_priority_and_image():
    version = project_version()
    for d in rendered():
        labels = d["metadata"].get("labels", {})
        what = f"{d['kind']}/{d['metadata']['name']}"
        assert labels.get("app.kubernetes.io/part-of") == "pageheat", what
        assert labels.get("app.kubernetes.io/version") == version, what
        if d["kind"] != "Namespace":
            assert labels.get("app.kubernetes.io/name") == "pageheat", what
    ds = manifests()["DaemonSet"]
    tmpl = ds["spec"]["template"]
    assert tmpl["metadata"]["labels"]["app.kubernetes.io/version"] == version
    # Selectors keep only the name: a DaemonSet's selector is immutable, the version is not.
    assert ds["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "pageheat"}
    spec = tmpl["spec"]
    # ptwalk is x86-64 only (page-table layout, -D__TARGET_ARCH_x86).
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    assert spec["priorityClassName"] == "system-cluster-critical"  # as kube-prometheus' node-exporter
    (c,) = spec["containers"]
    # The tag deploy/image/build.sh gives the image it builds.
    build = (DEPLOY / "image" / "build.sh").read_text()
    assert "tag=localhost/pageheat:$version" in build
    assert c["image"] == f"localhost/pageheat:{version}"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_generated_kubernetes_files_are_in_sync():
    r = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_prometheusrule_has_every_rule_group():
    rule = manifests()["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    want = [g for f in rule_files() for g in yaml.safe_load(f.read_text())["groups"]]
    assert rule["spec"]["groups"] == want


def test_dashboard_configmaps_carry_every_dashboard():
    files = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
    assert files
    cms = dashboard_configmaps()
    got = {}
    for cm in cms:
        ((name, text),) = cm["data"].items()
        got[name] = json.loads(text)
        assert len(text.encode()) < 1024 * 1024  # a ConfigMap holds at most 1 MiB
    assert got == {f.name: json.loads(f.read_text()) for f in files}


def test_every_alert_has_a_runbook_section():
    runbook = (ROOT / "docs" / "RUNBOOK.md").read_text()
    sections = re.split(r"^## ", runbook, flags=re.M)[1:]
    by_anchor = {sec.split("\n", 1)[0].strip().lower(): sec for sec in sections}
    alerts = [rule for f in rule_files() for g in yaml.safe_load(f.read_text())["groups"]
              for rule in g["rules"] if "alert" in rule]
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        page, anchor = url.split("#")
        assert page.endswith("/docs/RUNBOOK.md"), url
        assert anchor == rule["alert"].lower() and anchor in by_anchor, url
        for part in ("What it means", "What to check", "How to silence"):
            assert f"**{part}.**" in by_anchor[anchor], (rule["alert"], part)
    assert set(by_anchor) == {r["alert"].lower() for r in alerts}


def test_absent_alert_watches_the_real_job_name():
    """absent(up{job="pageheat"}) is only right if the exporter's job is called pageheat: in the
    example scrape config, and under the operator, where the job is the Service's name."""
    (rule,) = [r for f in rule_files() for g in yaml.safe_load(f.read_text())["groups"]
               for r in g["rules"] if r.get("alert") == "PageheatExporterAbsent"]
    job = re.fullmatch(r'absent\(up\{job="([^"]+)"\}\)', rule["expr"].strip()).group(1)
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert job in {j["job_name"] for j in cfg["scrape_configs"]}
    m = manifests()
    assert "jobLabel" not in m["ServiceMonitor"]["spec"]
    assert m["Service"]["metadata"]["name"] == job


def readme_block(after: str, lang: str = "sh") -> str:
    """The first ```lang block after the line containing ``after`` in README.md."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    return text[start:].split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def test_readme_podman_command_matches_the_daemonset():
    """The README's one-host podman command uses the DaemonSet's capabilities and host paths."""
    cmd = readme_block("On one host without Kubernetes").replace("\\\n", " ")
    run = next(line for line in cmd.splitlines() if line.startswith("podman run"))
    caps = set(re.search(r"--cap-add=(\S+)", run).group(1).split(","))
    (c,) = manifests()["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    assert "--cap-drop=all" in run
    assert caps == set(c["securityContext"]["capabilities"]["add"])
    mounts = set(re.findall(r"-v (/[^:\s]+):", run))
    for path in ("/sys/kernel/btf", "/sys/devices/system", "/sys/fs/bpf"):
        assert path in mounts, path
    assert f"localhost/pageheat:{project_version()}" in run


def test_readme_kustomize_overlay_renders(tmp_path):
    """The README's site overlay, next to a deploy/ like the checkout's, renders with the
    registry's image name."""
    block = readme_block("point the DaemonSet at your registry")
    overlay = block.split("<<'YAML'\n", 1)[1].split("YAML\n", 1)[0]
    site = tmp_path / "pageheat-site"
    site.mkdir()
    (site / "kustomization.yaml").write_text(overlay)
    (tmp_path / "deploy").symlink_to(DEPLOY)
    r = subprocess.run([shutil.which("kubectl") or "kubectl", "kustomize", str(site)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ds = next(d for d in yaml.safe_load_all(r.stdout) if d and d["kind"] == "DaemonSet")
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    assert c["image"] == f"registry.example.com/pageheat:{project_version()}"
