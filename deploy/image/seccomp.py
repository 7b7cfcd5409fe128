#!/usr/bin/env python3
"""Write podman's default seccomp profile with bpf() and perf_event_open() allowed by CAP_BPF
and CAP_PERFMON, as newer runtimes' defaults do (moby/containerd 1.7, CRI-O 1.25).

Debian 12's containers-common (0.50) allows both system calls only with CAP_SYS_ADMIN, which
pageheat no longer needs: with that profile the BPF object fails to load (EPERM) in a
container that has exactly the DaemonSet's capabilities.

    python3 deploy/image/seccomp.py > /etc/containers/pageheat-seccomp.json
    podman run --security-opt seccomp=/etc/containers/pageheat-seccomp.json ...
"""

from __future__ import annotations

import json
import sys

DEFAULT = "/usr/share/containers/seccomp.json"
BY_CAPABILITY = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}


def profile(default: dict) -> dict:
    """The default profile with the two calls taken out of its CAP_SYS_ADMIN rules and added
    back, allowed for CAP_SYS_ADMIN or their own capability; without either, the profile's
    default action (an error) applies, as before."""
    rules = []
    for rule in default["syscalls"]:
        names = [n for n in rule["names"] if n not in BY_CAPABILITY]
        if names:
            rules.append({**rule, "names": names})
    for name, cap in BY_CAPABILITY.items():
        for c in ("CAP_SYS_ADMIN", cap):
            rules.append({"names": [name], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [c]}})
    return {**default, "syscalls": rules}


def main() -> int:
    with open(sys.argv[1] if len(sys.argv) > 1 else DEFAULT) as f:
        json.dump(profile(json.load(f)), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
