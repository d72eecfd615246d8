#!/usr/bin/env bash
# GPU training benchmark: ResNet50 and Xception, 224 px, batch 256, FP32 / mixed / mixed+XLA,
# synthetic data vs the real input pipeline. One JSON line per configuration (about 8 min).
# Usage: bash bench/gpu.sh [extra options of python -m bench.gpu]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
exec timeout 900 "$PY" -m bench.gpu --workdir "${BENCH_GPU_WORKDIR:-/tmp/bench-gpu}" "$@"
