"""The cluster wing: the only code that imports Ray.

- `driver`: connect or start Ray, read shards with Ray Data, run TensorflowTrainer, evaluate.
- `worker`: the function every Ray Train worker runs; a thin shim around `training.loop`.

May import: everything below the command line (foundation, storage, data, telemetry,
training, evaluation, launch).
"""
