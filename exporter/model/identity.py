"""Who a process is on a fleet: its cgroup, and the container and pod that cgroup stands for.

A pid says little on a host running containers (every process is "java", and the pid changes
at each restart); the unit people reason about is the cgroup, the container and the pod. This
module takes a process's cgroup path (the memory controller's on cgroup v1, the unified one on
v2; read by ``kernel.cgroups.read_cgroup``), matches it against ``targets.cgroups`` globs, and
parses kubelet's cgroup names into a container id and a pod uid. It never calls the Kubernetes API:
the pod's name and namespace come from a PromQL join with kube-state-metrics (README).

Kubelet's cgroup names (pkg/kubelet/cm/cgroup_manager_linux.go, ``ToSystemd``/``ToCgroupfs``;
the runtime's scope names from containerd's, CRI-O's and dockershim/cri-dockerd's systemd
cgroup drivers):

* systemd driver: ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice/
  cri-containerd-<ID>.scope`` (also ``crio-<ID>.scope``, ``docker-<ID>.scope``); guaranteed
  pods sit directly under ``kubepods.slice`` (``kubepods-pod<UID>.slice``). systemd does not
  allow ``-`` inside a slice name's components (``-`` is its hierarchy separator), so kubelet
  writes the pod UID's dashes as underscores; they are turned back here.
* cgroupfs driver: ``/kubepods/burstable/pod<UID>/<ID>`` (guaranteed: ``/kubepods/pod<UID>/<ID>``;
  CRI-O: ``crio-<ID>``).

The container id is 64 hex digits in both drivers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_UID = r"[0-9a-fA-F_-]{32,36}"
_SYSTEMD_POD = re.compile(rf"^kubepods(?:-(?:burstable|besteffort|guaranteed))?-pod({_UID})\.slice$")
_SYSTEMD_CONTAINER = re.compile(r"^(?:cri-containerd|crio|docker)-([0-9a-f]{64})\.scope$")
_CGROUPFS_POD = re.compile(rf"^pod({_UID})$")
# containerd and dockershim name the container's cgroup by its id; CRI-O with the cgroupfs
# driver prefixes crio- (its conmon's cgroup, crio-conmon-<id>, is not the container).
_CGROUPFS_CONTAINER = re.compile(r"^(?:crio-)?([0-9a-f]{64})$")


@dataclass(frozen=True)
class Identity:
    """A followed process's fleet identity; every field "" when unknown or not a container."""

    cgroup: str = ""  # as /proc/PID/cgroup shows it: "/" is the hierarchy's root
    container_id: str = ""  # 64 lower-case hex digits
    pod_uid: str = ""  # the pod's metadata.uid, with dashes (kube_pod_info's uid label)
    comm: str = ""  # the process's name, as in the per-process series' comm label


def kubelet_ids(cgroup: str) -> tuple[str, str]:
    """(container_id, pod_uid) parsed from a kubelet-made cgroup path; ("", "") for any other
    path. A pod's own cgroup (no container below it) gives ("", uid). Pure; never raises."""
    parts = [p for p in cgroup.split("/") if p]
    pod, container = "", ""
    for i, part in enumerate(parts):
        # ".." above: a path relative to pageheat's own cgroup namespace (a pod's on cgroup
        # v2 nodes, see procfs.cgroup_namespace_problem); kubepods may be above where it
        # starts, and the pod's uid pattern is specific enough on its own.
        in_kubepods = any(p in ("kubepods", "..") or p.startswith("kubepods.") or p.startswith("kubepods-")
                          for p in parts[:i])
        if not in_kubepods:
            continue
        if m := _SYSTEMD_POD.match(part) or _CGROUPFS_POD.match(part):
            pod = m[1].replace("_", "-").lower()
        elif pod and (m := _SYSTEMD_CONTAINER.match(part) or _CGROUPFS_CONTAINER.match(part)):
            container = m[1]
    return container, pod


def identity(cgroup: str, comm: str = "") -> Identity:
    container, pod = kubelet_ids(cgroup)
    return Identity(cgroup, container, pod, comm)


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A cgroup glob as a regex over the whole path: ``*`` and ``?`` stay within one path
    component, ``**`` crosses ``/``, ``[...]`` is a character class; a trailing ``/**`` also
    matches the directory itself (the whole subtree). Raises ValueError for an unclosed ``[`` or
    a bad character class."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("/**", i) and i + 3 == n:
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)
            if end < 0:
                raise ValueError(f"unclosed [ in cgroup pattern {pattern!r}")
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            # Escaped: a backslash, and what re may one day read as set operations ("[",
            # "&&", "~~", "||": it warns about them today).
            out.append("[" + re.sub(r"([\\\[&~|])", r"\\\1", body) + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    try:
        return re.compile("".join(out))
    except re.error as e:  # e.g. a reversed range, [z-a]: a config error, one line
        raise ValueError(f"bad cgroup pattern {pattern!r}: {e}") from None


def matches(cgroup: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """Whether the cgroup path matches any of the globs (see glob_regex)."""
    return any(glob_regex(p).fullmatch(cgroup) for p in patterns)
