"""What `predict --data` writes under `--output`, and how a rerun finds what is done.

    _plan.json           the job: model, input fingerprint, parts, labels (written first)
    <part>.parquet       one file per input part, written whole in one atomic write once all
                         of the part's images are predicted: a part file exists complete or
                         not at all, so a killed job leaves no half part and a rerun skips it
    _SUCCESS             written last: counts over every part, the bad images, the speed

A part file has one row per input image, in the part's order:
    image | id   the image's URI (file inputs) or the data set example's id
    score_<label>  float32 probability per label (null for an image that could not be used)
    predicted    list<string>: labels whose score is above the model's threshold
    error        null, or why the image was not predicted (unreadable, not an image,
                 above the model's pixel limit)
The Parquet schema's metadata holds the label names and thresholds ("multilabel" key).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from job import storage
from job.errors import UserError

PLAN_FILE = "_plan.json"
SUCCESS_FILE = "_SUCCESS"
PART_SUFFIX = ".parquet"
SCORE_PREFIX = "score_"
METADATA_KEY = b"multilabel"
# What must be equal for a rerun to resume an output: the same model (its checkpoint and
# export), thresholds, inputs and labels.
SAME_JOB_KEYS = ("model", "model_identity", "thresholds", "inputs_fingerprint", "key_column", "class_names")
# _SUCCESS lists this many bad images by name; the part files have every one.
LISTED_BAD_IMAGES = 1000


def part_uri(output_uri: str, name: str) -> str:
    return storage.join(output_uri, name + PART_SUFFIX)


def part_uris(output_uri: str) -> list[str]:
    """The part files directly under `output_uri` (not in folders below it), complete by construction."""
    if not storage.exists(output_uri):
        return []
    folder = output_uri.rstrip("/")
    return [u for u in storage.list_files(folder, PART_SUFFIX) if storage.parent(u) == folder]


def completed_parts(output_uri: str) -> set[str]:
    """Names of the part files already under `output_uri`."""
    return {storage.basename(u)[: -len(PART_SUFFIX)] for u in part_uris(output_uri)}


def start_or_resume(output_uri: str, plan: dict) -> None:
    """Write the job's plan, or check that the plan already there is the same job.

    Raises:
        UserError: the output holds another job's results (other inputs, model or part size).
    """
    uri = storage.join(output_uri, PLAN_FILE)
    parts = completed_parts(output_uri)
    if storage.exists(uri) and parts:
        try:
            before = storage.read_json(uri)
        except UserError:  # unreadable: not something to resume
            before = {}
        changed = [k for k in SAME_JOB_KEYS if before.get(k) != plan.get(k)]
        if changed:
            raise UserError(
                f"{output_uri} holds the results of another predict job (different {', '.join(changed)}); "
                "resuming into it would mix them. Choose a new --output, or delete that one."
            )
        return
    if parts:
        raise UserError(f"{output_uri} already holds Parquet files but no {PLAN_FILE}; choose an empty --output.")
    # No part written yet: nothing to mix, whatever an earlier start planned.
    storage.write_json(uri, plan)


def part_table(
    key_column: str,
    keys: list[str],
    probabilities: np.ndarray,
    errors: list[str | None],
    class_names: list[str],
    thresholds: np.ndarray,
) -> pa.Table:
    """One part's rows. `probabilities` (n, k) may hold NaN rows where `errors` says why."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    usable = np.array([e is None for e in errors], dtype=bool)
    decisions = probabilities > np.asarray(thresholds, dtype=np.float32)[None, :]
    names = np.asarray(class_names, dtype=object)
    columns = {key_column: pa.array(keys, type=pa.string())}
    for j, name in enumerate(class_names):
        columns[f"{SCORE_PREFIX}{name}"] = pa.array(probabilities[:, j], type=pa.float32(), mask=~usable)
    columns["predicted"] = pa.array(
        [names[row].tolist() if ok else None for row, ok in zip(decisions, usable)], type=pa.list_(pa.string())
    )
    columns["error"] = pa.array(errors, type=pa.string())
    metadata = {
        METADATA_KEY: json.dumps({"class_names": list(class_names), "thresholds": [float(t) for t in thresholds]})
    }
    return pa.table(columns).replace_schema_metadata(metadata)


def write_part(output_uri: str, name: str, table: pa.Table) -> None:
    """Write one part's file in a single atomic write (an S3 PUT, a local rename)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(part_uri(output_uri, name), buffer.getvalue())


@dataclass(frozen=True)
class Totals:
    """Counts over every part file of an output."""

    parts: int
    images: int
    predicted: int
    bad: list[tuple[str, str]]  # (image or id, error)


def count_outputs(output_uri: str, key_column: str) -> Totals:
    """Read every part's key and error columns (not the scores) and count."""
    images = predicted = 0
    bad: list[tuple[str, str]] = []
    uris = part_uris(output_uri)
    for uri in uris:
        table = pq.read_table(
            pa.BufferReader(storage.read_bytes(uri)), columns=[key_column, "error"], use_threads=False
        )
        errors = table.column("error").to_pylist()
        images += len(errors)
        for key, error in zip(table.column(key_column).to_pylist(), errors):
            if error is None:
                predicted += 1
            else:
                bad.append((key, error))
    return Totals(len(uris), images, predicted, bad)


def write_success(output_uri: str, totals: Totals, summary: dict) -> dict:
    """Write _SUCCESS (JSON): the totals, the first bad images by name, and `summary`."""
    record = {
        **summary,
        "parts": totals.parts,
        "images": totals.images,
        "predicted": totals.predicted,
        "bad_images": len(totals.bad),
        "bad_listed": [{"image": key, "error": error} for key, error in totals.bad[:LISTED_BAD_IMAGES]],
    }
    storage.write_json(storage.join(output_uri, SUCCESS_FILE), record)
    return record
