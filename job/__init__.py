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
