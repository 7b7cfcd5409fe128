#!/usr/bin/env bash
# Install what pageheat needs on Debian 12 (as root), create .venv, build the BPF objects.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev   # BPF build and system libbpf
  python3-venv python3-dev                              # the venv
  prometheus                                            # tests scrape with a real Prometheus
  util-linux iproute2 procps tmux openssl systemd       # setpriv, tmux, openssl, systemd-analyze in tests
  qemu-system-x86 udev kmod busybox-static bpftrace numactl xz-utils cpio  # the kernel lab
  dwarves flex bison bc libssl-dev rsync linux-source-6.12  # kernel-patch/ (check.sh, build.sh)
  e2fsprogs                                             # mkfs.ext4 for the lab guests
  gcc libc6-dev                                         # tests/c helper programs
  mmdebstrap buildah podman runc                        # deploy/image/build.sh, tests/test_image.py
  memcached                                             # bench/overhead.py memcached
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
log=$(mktemp)
if ! .venv/bin/pip install -q -e '.[test,all]' >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
rm -f "$log"
# Byte-compiled as pip installs the wheel: with PYTHONDONTWRITEBYTECODE=1 in the environment an
# editable checkout would compile every module at each start (bench/harvest.py as_installed).
.venv/bin/python -m compileall -q exporter >/dev/null
bash bpf/build.sh >/dev/null
echo "setup done: $(.venv/bin/pageheat --version)"
