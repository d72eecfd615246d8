"""The training wing: the model and what one worker does to train it. No Ray, no boto3, no
prometheus_client: it talks to the outside through a `Reporter` and a telemetry object that
the caller passes in.

- `model`: backbones + float32 logits head; compile with loss and metrics.
- `metrics`: Keras metrics on logits (training).
- `checkpoints`: checkpoint layout, integrity manifest, restore-latest-good, retention.
- `callbacks`: the Keras callbacks and the one function that orders them.
- `loop`: `train_worker`: build or restore, wire the inputs, fit.

May import: the foundation, storage, data and telemetry (type hints only).
"""
