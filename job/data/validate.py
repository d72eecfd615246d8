"""Pre-flight check of a data set: what `python -m job validate` prints and `train` runs.

It checks that dataset.json parses; every listed shard exists with the listed size (and,
with the full hash check, sha256); records parse (every record with the full check, so a
TFRecord CRC error anywhere is found); sampled images decode; label widths match
`class_names` and values are 0/1; train and val are non-empty; and there are enough train
shards for the workers.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np

from job import storage
from job.data import shards
from job.errors import UserError


@dataclass
class ValidationReport:
    """The outcome: errors make it fail, warnings do not."""

    root: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    table: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self) -> str:
        lines = [self.table] if self.table else []
        lines += [f"WARNING: {w}" for w in self.warnings]
        lines += [f"ERROR: {e}" for e in self.errors]
        lines.append(f"{self.root}: {'OK' if self.ok else f'FAILED ({len(self.errors)} error(s))'}")
        return "\n".join(lines)


def _decodes(image: bytes) -> str | None:
    """None if the bytes are a decodable image, else the reason."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                return "empty image"
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def check_shard(
    root: str, manifest: shards.Manifest, shard: shards.Shard, *, full_hash: bool, sample_records: int, progress=None
) -> list[str]:
    """Problems found in one shard."""
    uri = storage.join(root, shard.path)
    if not storage.exists(uri):
        return [f"shard {uri} is listed in dataset.json but does not exist"]
    actual = storage.size(uri)
    if actual != shard.size_bytes:
        return [f"shard {uri} is {actual} bytes but the manifest lists {shard.size_bytes} (truncated or replaced)"]
    if not full_hash and sample_records == 0:
        return []
    data = storage.read_bytes(uri)
    if full_hash and hashlib.sha256(data).hexdigest() != shard.sha256:
        return [f"shard {uri} does not match its sha256 in dataset.json (its contents changed after it was written)"]
    # Counting is cheap once the bytes are here (framing or the Parquet footer): a wrong
    # count would make the planned steps per epoch wrong even when every record is fine.
    try:
        records = shards.count_records(data, manifest.format, uri)
    except shards.DatasetError as exc:
        return [str(exc)]
    if records != shard.num_examples:
        return [f"shard {uri} holds {records} records but dataset.json lists {shard.num_examples}"]
    problems: list[str] = []
    width = len(manifest.class_names)
    try:
        for index, example in enumerate(shards.read_shard(data, manifest.format, uri)):
            labels = np.asarray(example.labels)
            if labels.shape != (width,):
                problems.append(
                    f"shard {uri} record {index} ({example.id}) has {labels.size} labels but dataset.json "
                    f"lists {width} class names"
                )
            elif not np.isin(labels, (0, 1)).all():
                problems.append(f"shard {uri} record {index} ({example.id}) has label values other than 0/1")
            if index < sample_records:
                reason = _decodes(example.image)
                if reason:
                    problems.append(f"shard {uri} record {index} ({example.id}): the image does not decode ({reason})")
            if problems and len(problems) >= 5:
                break
            if not full_hash and index + 1 >= sample_records:
                return problems
    except shards.DatasetError as exc:
        return problems + [str(exc)]
    return problems


def validate_dataset(
    root: str, *, full_hash: bool = False, workers: int = 1, sample_records: int = 8, progress=None
) -> ValidationReport:
    """Check a data set; never raises for data problems, it reports them.

    Args:
        root: the data set URI.
        full_hash: read every shard whole: sha256 and every record (slower, complete).
        workers: the worker count the job will use (for the shard-count warning).
        sample_records: images decoded per shard.
        progress: optional callable(done, total) for a progress display.
    """
    report = ValidationReport(root=root)
    try:
        manifest = shards.load_manifest(root)
    except UserError as exc:
        report.errors.append(str(exc))
        return report
    for split in ("train", "val"):
        if manifest.num_examples(split) == 0:
            report.errors.append(f"the {split!r} split is empty")
    if manifest.num_examples("test") == 0:
        report.warnings.append("the 'test' split is empty: the run will report no test metrics")
    train_shards = len(manifest.splits.get("train", []))
    if 0 < train_shards < workers:
        report.warnings.append(
            f"{train_shards} train shard(s) for {workers} workers: reads will be less parallel than the workers. "
            "Re-create the data set with --num-shards at least the worker count."
        )
    all_shards = [s for split in manifest.splits.values() for s in split]
    for done, shard in enumerate(all_shards, start=1):
        report.errors.extend(check_shard(root, manifest, shard, full_hash=full_hash, sample_records=sample_records))
        if progress:
            progress(done, len(all_shards))
    report.table = summary_table(manifest)
    return report


def summary_table(manifest: shards.Manifest) -> str:
    """Examples and label counts per split, as a fixed-width table."""
    names = list(manifest.class_names)
    width = max(8, *(len(n) for n in names))
    header = f"{'split':<6} {'shards':>6} {'examples':>9} " + " ".join(f"{n:>{width}}" for n in names)
    rows = [header, "-" * len(header)]
    for split in shards.SPLITS:
        if split not in manifest.splits:
            continue
        counts = manifest.label_counts(split)
        rows.append(
            f"{split:<6} {len(manifest.splits[split]):>6} {manifest.num_examples(split):>9} "
            + " ".join(f"{c:>{width}}" for c in counts)
        )
    return "\n".join(rows)
