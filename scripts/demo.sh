#!/usr/bin/env bash
# Quick start, step 1: set everything up, then run the exporter on the built-in demo workload.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pageheat demo --seconds "${DEMO_SECONDS:-30}"
