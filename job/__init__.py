"""Multi-label image classification training job (`python -m job COMMAND`).

Wings, lowest first; each may import only wings below it (tests/unit/test_layers.py checks):

    errors, config, console, progress   the foundation
    storage/      object storage and the run folder (the only boto3/pyarrow.fs code)
    data/         shards, splits, prepare, validate, tf.data pipeline
    telemetry     Prometheus metrics (the only prometheus_client code)
    training/     model, Keras metrics, checkpoints, callbacks, the worker loop
    evaluation/   scores, evaluation, report, plots, export
    launch/       plan and pre-flight checks, the single-process run
    cluster/      Ray: driver and worker (the only Ray code)
    experiments/  multi-run experiments
    cli/          one module per command
"""

import os as _os

# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 VNNI/BF16 or AMX
# (recent Intel); on others, AMD EPYC included, it runs convolutions on Eigen, 2.6x slower
# for the demo model's epoch on a 2-core AVX2 EPYC (docs/performance.md "oneDNN"). Set before
# any TensorFlow import: every command imports this package first, and a local Ray's workers
# inherit the driver's environment. A user's own TF_ENABLE_ONEDNN_OPTS=0 is kept.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
