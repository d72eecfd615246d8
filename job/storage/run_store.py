"""The run store: the one place that names, writes and reads the files and folders of a run.

A run is the folder given as `train --output` (a local path or `s3://bucket/runs/NAME`):

    config.json                 resolved config, run name, data set, class names, versions
    history.json                one row per epoch (the driver writes it when training ends)
    metrics.json                evaluation of the best checkpoint, per split
    thresholds.json             per-label thresholds tuned on val
    report.md, per_label.csv    the evaluation report
    predictions/SPLIT.parquet   per-image predictions of each evaluated split: id, true labels,
                                score per label, labels predicted at 0.5 and tuned (docs/predictions.md)
    predictions.png, per_label.png, cooccurrence.png, history.png
    checkpoint_epoch-NNNNNN/    one folder per saved epoch (layout: training/checkpoints.py)
    checkpoint_epoch-NNNNNN-step-SSSSSSSS/
                                a mid-epoch checkpoint: NNNNNN epochs and SSSSSSSS steps of the
                                next one done (checkpoint.every_steps, or a preemption notice)
    tensorboard/                TensorBoard event files of rank 0
    attempts/                   one empty marker per worker-group start (restart counting)
    preemptions/                one record per preemption notice the workers acted on
    lease.json                  the run lease while a driver runs (storage/lease.py)

Everything else in the product asks this module for a name or a file; nobody joins these
names by hand.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from job.config import Config, config_from_dict, config_to_dict
from job.errors import UserError
from job.storage.objects import (
    delete,
    exists,
    list_files,
    open_write,
    read_json,
    write_bytes,
    write_json,
    write_text,
)
from job.storage.paths import join

if TYPE_CHECKING:
    import pyarrow as pa

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
THRESHOLDS_FILE = "thresholds.json"
REPORT_FILE = "report.md"
PER_LABEL_CSV_FILE = "per_label.csv"
PLOT_FILES = ("predictions.png", "per_label.png", "cooccurrence.png", "history.png")
PREDICTIONS_DIR = "predictions"
TENSORBOARD_DIR = "tensorboard"
ATTEMPTS_DIR = "attempts"
PREEMPTIONS_DIR = "preemptions"
LEASE_FILE = "lease.json"
CHECKPOINT_PREFIX = "checkpoint_epoch-"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)(?:-step-(\d+))?$")


def checkpoint_dir_name(epoch: int, step: int = 0) -> str:
    """Folder name of the checkpoint taken after `epoch` whole epochs and `step` steps of the next.

    Epoch-end checkpoints (step 0) keep their short name; names sort like their positions.
    """
    name = f"{CHECKPOINT_PREFIX}{epoch:06d}"
    return f"{name}-step-{step:08d}" if step else name


def checkpoint_position(dir_name: str) -> tuple[int, int] | None:
    """(epochs done, steps into the next epoch) of a checkpoint folder name; None for other names."""
    match = _CHECKPOINT_NAME.match(dir_name)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


@dataclass(frozen=True)
class SavedRunConfig:
    """What config.json tells a later command (evaluate, export, predict) about a run."""

    config: Config
    class_names: list[str]
    data_uri: str


class RunStore:
    """One run folder, local or s3://."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")

    def path(self, name: str) -> str:
        """The URI of a file or folder of this run, by its name above."""
        return join(self.uri, name)

    # -------------------------------------------------------------- config

    def is_run(self) -> bool:
        """True when the folder holds a run's config.json."""
        return exists(self.path(CONFIG_FILE))

    def write_config(
        self, cfg: Config, *, run_name: str, data_uri: str, class_names: list[str], facts: dict[str, Any]
    ) -> None:
        """Save the resolved config with the run name, data set, class names and other `facts`."""
        write_json(
            self.path(CONFIG_FILE),
            {
                "config": config_to_dict(cfg),
                "run_name": run_name,
                "data": data_uri,
                "class_names": list(class_names),
                **facts,
            },
        )

    def read_config(self) -> SavedRunConfig:
        """The config a run was trained with.

        Raises:
            UserError: the folder is not a run (no config.json).
        """
        if not self.is_run():
            raise UserError(f"{self.uri} is not a run folder (no {CONFIG_FILE}). Pass the --output of a `train` run.")
        saved = read_json(self.path(CONFIG_FILE))
        return SavedRunConfig(
            config=config_from_dict(saved["config"]),
            class_names=list(saved["class_names"]),
            data_uri=saved.get("data", ""),
        )

    # -------------------------------------------------------------- results

    def write_history(self, history: list[dict]) -> None:
        write_json(self.path(HISTORY_FILE), history)

    def read_history(self) -> list[dict] | None:
        """history.json, or None before training has ended."""
        uri = self.path(HISTORY_FILE)
        return read_json(uri) if exists(uri) else None

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.path(METRICS_FILE), metrics)

    def write_thresholds(self, record: dict) -> None:
        write_json(self.path(THRESHOLDS_FILE), record)

    def read_thresholds(self) -> Any | None:
        """thresholds.json as saved (checked by the caller, who knows the labels), or None."""
        uri = self.path(THRESHOLDS_FILE)
        return read_json(uri) if exists(uri) else None

    def write_report(self, markdown: str, per_label_csv: str) -> None:
        write_text(self.path(REPORT_FILE), markdown)
        write_text(self.path(PER_LABEL_CSV_FILE), per_label_csv)

    @staticmethod
    def predictions_name(split: str) -> str:
        """The per-image predictions file of `split`, relative to the run (as report.md links it)."""
        return f"{PREDICTIONS_DIR}/{split}.parquet"

    def predictions_uri(self, split: str) -> str:
        return self.path(self.predictions_name(split))

    def write_predictions(self, split: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
        """Stream `batches` into predictions/SPLIT.parquet, one row group per batch.

        Batches are written as they come, so a caller that builds them one at a time never
        holds the whole table. The file is published only when every batch is written (a
        local rename, or the upload of the spooled file, multipart when large), as every run file is.

        Returns:
            The number of rows written.
        """
        import pyarrow.parquet as pq

        rows = 0
        with open_write(self.predictions_uri(split)) as f:
            writer = pq.ParquetWriter(f, schema)
            try:
                for batch in batches:
                    writer.write_batch(batch)
                    rows += batch.num_rows
            finally:
                writer.close()
        return rows

    def remove_predictions(self, split: str) -> bool:
        """Delete predictions/SPLIT.parquet if it is there (a split this evaluation left out)."""
        uri = self.predictions_uri(split)
        if not exists(uri):
            return False
        delete(uri)
        return True

    def write_plot(self, name: str, png: bytes) -> None:
        if name not in PLOT_FILES:
            raise ValueError(f"unknown plot {name!r}; add it to run_store.PLOT_FILES")
        write_bytes(self.path(name), png)

    # -------------------------------------------------------------- training side

    @property
    def tensorboard_uri(self) -> str:
        return self.path(TENSORBOARD_DIR)

    def checkpoint_uri(self, epoch: int, step: int = 0) -> str:
        return self.path(checkpoint_dir_name(epoch, step))

    def record_attempt(self) -> None:
        """Leave one marker per worker-group start, so the driver can count restarts."""
        write_text(join(self.path(ATTEMPTS_DIR), uuid.uuid4().hex), "")

    def count_attempts(self) -> int:
        """Worker-group starts recorded so far."""
        return len(list_files(self.path(ATTEMPTS_DIR)))

    def record_preemption(self, record: dict[str, Any]) -> None:
        """Keep one record per preemption notice acted on (the driver counts them)."""
        write_json(join(self.path(PREEMPTIONS_DIR), f"{uuid.uuid4().hex}.json"), record)

    def count_preemptions(self) -> int:
        """Preemption notices recorded so far."""
        return len(list_files(self.path(PREEMPTIONS_DIR)))
