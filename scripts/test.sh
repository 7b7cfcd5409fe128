#!/usr/bin/env bash
# Quick start, step 2: set everything up, then run the whole test suite (root, real BPF,
# a real Prometheus, and the QEMU kernel lab).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"  # vng and virtme-configkernel for the lab
exec .venv/bin/python -m pytest "$@"
