"""The launch wing: what every training run does around training, and the single-process run.

- `plan`: pre-flight checks, the plan (`--dry-run` prints it), config.json, the final evaluation.
- `local`: `train --local`: the same worker function in this process, without Ray.

May import: the foundation, storage, data, telemetry, training and evaluation.
"""
