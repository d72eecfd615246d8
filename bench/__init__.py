"""Benchmarks of the training job: input pipeline, Ray overhead, checkpoints, GPU training.

`python -m bench.run` (or `make bench`) runs the CPU suite and writes bench/results.json
(the contract in docs/performance.md) and bench/results.md. `python -m bench.gpu` times GPU training.
"""
