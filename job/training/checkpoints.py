"""Checkpoint layout, integrity manifest, restore-latest-good, retention.

A checkpoint is a folder RUN/checkpoint_epoch-NNNNNN[-step-SSSSSSSS]/ holding:
    model.ckpt.index, model.ckpt.data-*   weights + optimizer state (tf.train.Checkpoint)
    state.json                            epoch, step_in_epoch, val_loss, callback state, history so far
    manifest.json                         size and sha256 of every other file
A folder whose manifest is missing or does not match its files is not a checkpoint: restore
skips it, says which file failed, and falls back to the previous one.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

from job import storage
from job.storage import scratch
from job.storage.run_store import checkpoint_dir_name, checkpoint_position

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE = "state.json"
WEIGHTS_PREFIX = "model.ckpt"


@dataclass(frozen=True)
class RestoredCheckpoint:
    """A verified checkpoint copied to a local folder."""

    uri: str
    local_dir: str
    state: dict

    @property
    def weights_prefix(self) -> str:
        return os.path.join(self.local_dir, WEIGHTS_PREFIX)

    @property
    def epoch(self) -> int:
        """Whole epochs done."""
        return int(self.state["epoch"])

    @property
    def step_in_epoch(self) -> int:
        """Steps of epoch `epoch + 1` done (0 for an epoch-end checkpoint)."""
        return int(self.state.get("step_in_epoch", 0))


def write_manifest(local_dir: str) -> dict:
    """Record size and sha256 of every file in `local_dir`; returns the manifest."""
    files = {}
    for name in sorted(os.listdir(local_dir)):
        path = os.path.join(local_dir, name)
        if name == MANIFEST or not os.path.isfile(path):
            continue
        files[name] = {"size": os.path.getsize(path), "sha256": storage.sha256_file(path)}
    manifest = {"files": files}
    storage.write_json(os.path.join(local_dir, MANIFEST), manifest)
    return manifest


def verify(local_dir: str) -> list[str]:
    """Problems found in a local checkpoint folder; empty when it is intact."""
    path = os.path.join(local_dir, MANIFEST)
    if not os.path.isfile(path):
        return [f"{MANIFEST} is missing (the checkpoint was not finished)"]
    try:
        files = storage.read_json(path)["files"]
    except (ValueError, KeyError, TypeError, storage.StorageError):
        return [f"{MANIFEST} is unreadable"]
    problems = []
    for name, meta in files.items():
        fpath = os.path.join(local_dir, name)
        if not os.path.isfile(fpath):
            problems.append(f"{name} is missing")
        elif os.path.getsize(fpath) != meta["size"]:
            problems.append(f"{name} is {os.path.getsize(fpath)} bytes, the manifest lists {meta['size']}")
        elif storage.sha256_file(fpath) != meta["sha256"]:
            problems.append(f"{name} does not match its sha256")
    if STATE not in files:
        problems.append(f"{STATE} is not listed")
    return problems


def list_checkpoints(run_uri: str) -> list[tuple[tuple[int, int], str]]:
    """((epoch, step in the next epoch), uri) of every checkpoint folder under the run, newest first."""
    found: dict[tuple[int, int], str] = {}
    for uri in storage.list_files(run_uri):
        rel = uri[len(run_uri.rstrip("/")) + 1 :]
        top = rel.split("/", 1)[0]
        position = checkpoint_position(top)
        if position is not None and "/" in rel:
            found[position] = storage.join(run_uri, top)
    return sorted(found.items(), reverse=True)


def fetch(uri: str, local_dir: str) -> RestoredCheckpoint | None:
    """Copy one checkpoint locally and verify it; None (with a logged reason) if it is bad."""
    os.makedirs(local_dir, exist_ok=True)
    try:
        storage.download_dir(uri, local_dir)
    except Exception as exc:  # a half-deleted or unreadable folder: treat as corrupt
        log.warning("checkpoint %s could not be read (%s); trying the previous one", uri, exc)
        return None
    problems = verify(local_dir)
    if problems:
        log.warning("checkpoint %s is corrupt: %s; falling back to the previous checkpoint", uri, "; ".join(problems))
        return None
    return RestoredCheckpoint(uri=uri, local_dir=local_dir, state=storage.read_json(os.path.join(local_dir, STATE)))


def restore_latest(run_uri: str, work_dir: str | None = None) -> RestoredCheckpoint | None:
    """The newest intact checkpoint of a run, copied to a local folder; None if there is none."""
    work_dir = work_dir or scratch.make_dir("restore-")
    for position, uri in list_checkpoints(run_uri):
        restored = fetch(uri, os.path.join(work_dir, checkpoint_dir_name(*position)))
        if restored is not None:
            return restored
    return None


def restore_best(run_uri: str, work_dir: str | None = None) -> RestoredCheckpoint | None:
    """The intact epoch-end checkpoint with the lowest val_loss (newest wins ties); None if there is none.

    Mid-epoch checkpoints have no validation and are never the best.
    """
    work_dir = work_dir or scratch.make_dir("best-")
    candidates = []
    for (epoch, step), uri in list_checkpoints(run_uri):
        if step:
            continue
        try:
            state = storage.read_json(storage.join(uri, STATE))
            candidates.append((float(state.get("val_loss", float("inf"))), -epoch, uri))
        except Exception:
            continue
    for _, neg_epoch, uri in sorted(candidates):
        restored = fetch(uri, os.path.join(work_dir, checkpoint_dir_name(-neg_epoch)))
        if restored is not None:
            return restored
    return None


def publish(local_dir: str, uri: str) -> None:
    """Upload a finished checkpoint folder, manifest last, so a reader never trusts a partial one."""
    names = sorted(n for n in os.listdir(local_dir) if n != MANIFEST)
    for name in [*names, MANIFEST]:
        storage.copy_file(os.path.join(local_dir, name), storage.join(uri, name))


def prune(run_uri: str, keep_best: int) -> list[str]:
    """Delete checkpoints beyond the best `keep_best` by val_loss, always keeping the latest.

    Used by single-process runs; Ray Train applies the same policy to distributed runs.
    Returns the deleted URIs.
    """
    ckpts = list_checkpoints(run_uri)
    if len(ckpts) <= keep_best + 1:
        return []
    scored = []
    for (epoch, step), uri in ckpts:
        try:
            # A mid-epoch checkpoint (no val_loss) ranks last: it only matters while it is the latest.
            loss = float(storage.read_json(storage.join(uri, STATE)).get("val_loss") or float("inf"))
        except Exception:
            loss = float("inf")
        scored.append((loss, -epoch, -step, uri))
    keep = {uri for *_, uri in sorted(scored)[:keep_best]} | {ckpts[0][1]}
    deleted = [uri for _, uri in ckpts if uri not in keep]
    for uri in deleted:
        storage.delete(uri)
    return deleted


def remove_local(path: str) -> None:
    """Delete a local checkpoint copy; a missing folder is fine."""
    shutil.rmtree(path, ignore_errors=True)
