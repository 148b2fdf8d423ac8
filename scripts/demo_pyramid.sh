#!/usr/bin/env bash
# Synthetic end-to-end demo of the spatiotemporal pyramid (a few minutes on 2 CPU cores):
# generate the synthetic UCF101-layout set, extract frames + Farneback flow, train variants A
# and D with the tiny backbone, evaluate, print the ablation table and save plots.
# Results are SYNTHETIC-data numbers, not UCF101 ones.
#   usage: scripts/demo_pyramid.sh [OUT_DIR] [extra `python -m pyramid demo` options]
#   e.g.   scripts/demo_pyramid.sh demo_out --variants A,B,C,D
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
OUT="${1:-demo_out}"
shift || true
exec "$PY" -m pyramid demo --out "$OUT" "$@"
