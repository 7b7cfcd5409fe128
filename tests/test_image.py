"""The OCI image: deploy/image/build.sh builds it from Debian packages and PyPI; podman loads
the archive and runs it the way the DaemonSet runs it, following a ground-truth workload on the
host; /metrics must show the workload's hot address bins hotter than its cold ones.

How the container is run, taken from the rendered DaemonSet (`kubectl kustomize`), not written
down twice: the host PID namespace (hostPID), `--cap-drop=all` plus exactly the DaemonSet's
`capabilities.add`, `--read-only` (readOnlyRootFilesystem, with podman's extra tmpfs mounts
turned off), the DaemonSet's user, no_new_privs (allowPrivilegeEscalation: false), every
hostPath volume at its mountPath (read-only where the DaemonSet says so), the emptyDir as a
tmpfs, the ConfigMap as a read-only /etc/pageheat, the memory limit, and the container's args.
The runtime's default seccomp profile stands for RuntimeDefault.

Two deviations, both forced by this machine, not by pageheat:
- `--network=host`: the pod network is the cluster's; here the test scrapes 127.0.0.1.
- `--runtime=runc` and explicit `--ulimit`s. crun 1.8 (Debian 12's default for podman) refuses
  to start any container here: "cgroups in hybrid mode not supported, drop all controllers from
  cgroupv2" (the host mounts cgroup v1 controllers plus a cgroup2 hierarchy at
  /sys/fs/cgroup/unified). runc accepts it with `--cgroup-manager=cgroupfs`. And the sandbox
  these machines run in has no CAP_SYS_RESOURCE in its bounding set, so the runtime cannot
  raise RLIMIT_NOFILE / RLIMIT_NPROC to podman's defaults ("error setting rlimit type 7:
  operation not permitted"): the test sets both below the host's hard limits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, free_port
from pageheat.kernel import capabilities
from prometheus_client.parser import text_string_to_metric_families
from test_deploy import manifests

BUILD = ROOT / "deploy" / "image" / "build.sh"
SIZE_GOAL = 200 * 1000 * 1000  # bytes, unpacked
RUNTIME = ["--runtime=runc", "--cgroup-manager=cgroupfs", "--ulimit", "nofile=4096:4096",
           "--ulimit", "nproc=4096:4096"]


def tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed (scripts/setup.sh installs it)")
    return exe


# The test loads the archive into a storage of its own: it proves that the archive alone is
# enough, and never touches the images and containers of the machine's default storage.
STORE: list[str] = []


def podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([tool("podman"), *STORE, *args], capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, f"podman {' '.join(args)}: {r.stderr}"
    return r


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Iterator[str]:
    """Build the image and load its OCI archive into an empty storage of the test's own (what a
    node without the build would do). Yields the tag."""
    tool("mmdebstrap")
    tool("buildah")
    out = tmp_path_factory.mktemp("image")
    t = time.monotonic()
    r = subprocess.run(["bash", str(BUILD), str(out)], capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"image build: {time.monotonic() - t:.0f} s\n{r.stdout}")
    tag = re.search(r"^image: (\S+)$", r.stdout, re.M).group(1)
    (archive,) = out.glob("*.oci.tar")
    store = Path(tempfile.mkdtemp(prefix="pageheat-podman-", dir="/var/tmp"))
    STORE[:] = [f"--root={store / 'root'}", f"--runroot={store / 'run'}"]
    try:
        assert not podman("images", "--quiet").stdout.strip()
        loaded = podman("load", "--input", str(archive))
        assert tag in loaded.stdout + loaded.stderr, loaded.stdout + loaded.stderr
        yield tag
    finally:
        # Only this storage's containers and images (not `system reset`, which also deletes the
        # machine's podman networks).
        podman("rm", "--all", "--force", check=False)
        podman("rmi", "--all", "--force", check=False)
        STORE.clear()
        shutil.rmtree(store, ignore_errors=True)


def test_image_is_small_and_has_no_build_tools(image):
    size = json.loads(podman("image", "inspect", image).stdout)[0]["Size"]
    print(f"image size: {size / 1e6:.1f} MB")
    assert size < SIZE_GOAL, f"{size / 1e6:.0f} MB"
    mnt = Path(podman("image", "mount", image).stdout.strip())
    try:
        for p in ("usr/bin/gcc", "usr/bin/cc", "usr/bin/clang", "usr/bin/llc", "usr/sbin/bpftool",
                  "usr/bin/apt", "opt/pageheat/bin/pip"):
            assert not (mnt / p).exists(), p
        site = mnt / "opt/pageheat/lib/python3.11/site-packages"
        objects = sorted(p.name for p in (site / "pageheat/bpf").glob("*.bpf.o"))
        assert objects == sorted(p.name.removesuffix(".c") + ".o"
                                 for p in (ROOT / "bpf").glob("*.bpf.c"))
        assert not list(site.glob("numpy/**/tests")), "numpy's tests are in the image"
        assert not list((mnt / "var/lib/apt/lists").glob("*_Packages"))
        docs = [p for p in (mnt / "usr/share/doc").rglob("*") if p.is_file()]
        assert docs and all(p.name == "copyright" for p in docs)
        assert (mnt / "usr/lib/x86_64-linux-gnu/libbpf.so.1").exists()
    finally:
        podman("image", "unmount", image, check=False)
    # The image's own entry point answers without a kernel.
    r = podman("run", "--rm", *RUNTIME, "--network=none", image, "--version")
    assert r.stdout.startswith("pageheat "), r.stdout + r.stderr


def daemonset_run_args(tmp: Path, config: str) -> tuple[list[str], list[str]]:
    """(podman run options, container args) from the rendered DaemonSet."""
    m = manifests()
    spec = m["DaemonSet"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert spec["hostPID"] is True and sc["capabilities"]["drop"] == ["ALL"]
    opts = ["--pid=host", "--network=host", "--cap-drop=all",
            *(f"--cap-add={cap}" for cap in sc["capabilities"]["add"]),
            f"--user={sc['runAsUser']}", "--read-only", "--read-only-tmpfs=false"]
    if sc["allowPrivilegeEscalation"] is False:
        opts.append("--security-opt=no-new-privileges")
    # RuntimeDefault: podman's default profile, with bpf() and perf_event_open() allowed by
    # CAP_BPF / CAP_PERFMON as newer runtimes' defaults do (Debian 12's allows them only with
    # CAP_SYS_ADMIN, which pageheat does not need): deploy/image/seccomp.py.
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    profile = tmp / "seccomp.json"
    with open(profile, "w") as f:
        subprocess.run([sys.executable, str(ROOT / "deploy/image/seccomp.py")], stdout=f, check=True)
    opts.append(f"--security-opt=seccomp={profile}")
    if "memory" in c["resources"].get("limits", {}):
        opts.append(f"--memory={c['resources']['limits']['memory'].replace('Mi', 'm')}")
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mt in c["volumeMounts"]:
        v = volumes[mt["name"]]
        ro = "ro" if mt.get("readOnly") else ""
        if "hostPath" in v:
            prop = ",rslave" if mt.get("mountPropagation") == "HostToContainer" else ""
            opts.append(f"--volume={v['hostPath']['path']}:{mt['mountPath']}:{ro or 'rw'}{prop}")
        elif "configMap" in v:
            cfg = tmp / "configmap"
            cfg.mkdir()
            (cfg / "pageheat.yml").write_text(config)
            opts.append(f"--volume={cfg}:{mt['mountPath']}:ro")
        elif "emptyDir" in v:
            size = v["emptyDir"].get("sizeLimit", "16Mi").replace("Mi", "m")
            opts.append(f"--tmpfs={mt['mountPath']}:rw,size={size}")
        else:
            pytest.fail(f"volume kind not handled by the test: {v}")
    return opts, c["args"]


def scrape(port: int) -> list:
    """Every sample of /metrics (name, labels, value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return [s for f in text_string_to_metric_families(r.read().decode()) for s in f.samples]


def of(samples: list, name: str, pid: int) -> list:
    return [s for s in samples if s.name == name and s.labels.get("pid") == str(pid)]


def accessed_by_bin(samples: list, pid: int) -> dict[int, float]:
    """Cumulative accessed pages per address bin (summed over node and type), de-accumulated."""
    cum: dict[float, float] = {}
    for s in of(samples, "pageheat_accessed_pages_bucket", pid):
        le = float(s.labels["le"])
        cum[le] = cum.get(le, 0.0) + s.value
    les = sorted(le for le in cum if le != float("inf"))
    return {int(le): cum[le] - (cum[les[i - 1]] if i else 0.0) for i, le in enumerate(les)}


@pytest.mark.kernel
def test_image_runs_like_the_daemonset(ptwalk_ok, image, workload, tmp_path):
    t = workload("--size", "256MiB", "--layout", "contiguous", "--hot", "0.25", "--warm", "0.05")
    port = free_port()
    config = yaml.safe_load(manifests()["ConfigMap"]["data"]["pageheat.yml"])
    # The DaemonSet's configuration, pointed at the workload and made fast for a test.
    config.update(listen=f"127.0.0.1:{port}", aging="500ms", cpu_budget=0.5,
                  discovery_interval="500ms", expose_addresses=True,
                  targets={"pids": [t.pid], "top_rss": 0})
    opts, args = daemonset_run_args(tmp_path, yaml.safe_dump(config))
    name = f"pageheat-test-{port}"
    r = podman("run", "--detach", "--name", name, *RUNTIME, *opts, image, *args, check=False)
    assert r.returncode == 0, f"podman cannot run the image here: {r.stderr.strip()}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
                break
            except OSError:
                state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
                if state != "running" or time.monotonic() > deadline:
                    logs = podman("logs", name, check=False)
                    pytest.fail(f"container {state}: {logs.stdout[-2000:]}{logs.stderr[-2000:]}")
                time.sleep(0.5)
        # The exporter runs with exactly the DaemonSet's capabilities, no_new_privs, a read-only
        # root and the host's PID namespace, as the kernel sees it.
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", name).stdout)
        status = dict(line.split(":\t", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
        by_name = {v.removeprefix("CAP_"): k for k, v in capabilities.NAMES.items()}
        added = manifests()["DaemonSet"]["spec"]["template"]["spec"]["containers"][0][
            "securityContext"]["capabilities"]["add"]
        want = sum(1 << by_name[c] for c in added)
        assert int(status["CapEff"], 16) == want and int(status["CapBnd"], 16) == want, status
        assert status["NoNewPrivs"].strip() == "1"
        root = next(ln.split() for ln in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                    if ln.split()[4] == "/")
        assert "ro" in root[5].split(","), root
        assert Path(f"/proc/{pid}/ns/pid").readlink() == Path("/proc/self/ns/pid").readlink()

        # Wait for a few harvests, then measure the accessed pages per bin over 6 s.
        deadline = time.monotonic() + 60
        while True:
            fam = scrape(port)
            harvests = of(fam, "pageheat_harvests_total", t.pid)
            if harvests and harvests[0].value >= 4:
                break
            assert time.monotonic() < deadline, "no harvests of the workload after 60 s"
            time.sleep(1)
        first = accessed_by_bin(fam, t.pid)
        t0 = time.monotonic()
        time.sleep(6)
        fam = scrape(port)
        seconds = time.monotonic() - t0
        last = accessed_by_bin(fam, t.pid)
        rate = {b: (last[b] - first.get(b, 0.0)) / seconds for b in last}

        bins = {}
        for s in of(fam, "pageheat_address_bin_info", t.pid):
            bins[int(s.labels["bin"])] = (int(s.labels["start"], 16), int(s.labels["end"], 16))
        hot_bins, cold_bins = t.hot_and_cold_bins(bins)
        hot_rate = min(rate[b] for b in hot_bins)
        cold_rate = max(rate[b] for b in cold_bins)
        assert hot_rate > 5 * cold_rate, (rate, hot_bins, cold_bins)
        assert hot_rate > 100  # pages per second
    finally:
        podman("rm", "--force", "--time", "5", name, check=False)
