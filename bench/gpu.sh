#!/usr/bin/env bash
# GPU training benchmark: ResNet50 and Xception, 224 px, batch 256, FP32 / mixed / mixed+XLA,
# synthetic data vs the real input pipeline through both ingest paths (data.ingest: direct =
# ShardFiles, ray_data = Ray Data iter_batches), shards read from the embedded S3 server in a
# child process as a cluster worker reads them. One JSON line per configuration and ingest path
# (6 configurations x 2 paths), also written to $BENCH_GPU_WORKDIR/gpu-results.json after every
# line. Sized for about 10 minutes on one GPU (an estimate: 20 timed steps after 5 warm-up
# steps for each of synthetic, direct and ray_data; compiling dominates); cut at 11 minutes,
# then the batch-inference check (3 minutes at most).
# Usage: bash bench/gpu.sh [extra options of python -m bench.gpu, e.g. --data local, --ingest direct]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
WORKDIR="${BENCH_GPU_WORKDIR:-/tmp/bench-gpu}"
mkdir -p "$WORKDIR"
# SIGTERM at 11 min lets the script stop Ray and the S3 child itself; SIGKILL 60 s later if it cannot.
timeout --kill-after=60 660 "$PY" -m bench.gpu --workdir "$WORKDIR" --data s3 --ingest direct,ray_data \
    --steps 20 --warmup 5 --result "$WORKDIR/gpu-results.json" "$@"
# Batch inference on the GPU: `predict --data` with its default pool (one actor per GPU) vs the
# single-process `predict`, 2,000 images at 224 px, ResNet50 (docs/batch-inference.md); 3 min cap.
timeout --kill-after=30 180 "$PY" -m bench.inference --workdir "$WORKDIR" --runs single,auto --rounds 1 \
    --backbone resnet50 --result "$WORKDIR/gpu-inference.json"
cat "$WORKDIR/gpu-inference.json"
