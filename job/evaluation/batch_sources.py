"""What `predict --data` reads, cut into parts: one output file per part, so a rerun can skip
the parts already written.

Three kinds of input, told apart by what is at the URI:

- a data set in the project's format (a folder with dataset.json): one part per shard file
  of each requested split, named `<split>-NNNNN`; each row keeps the example's `id`;
- a CSV file (`.csv`): the `image` column (or the first one) lists image paths, local or
  s3://; a relative path is taken from the CSV's folder; a file whose first line is already
  an image path has no header; parts of `images_per_part` in the
  listed order, named `part-NNNNN`;
- any other folder or s3:// prefix: every image file below it (.jpg .jpeg .png .gif .bmp,
  any case), sorted, in parts of `images_per_part`.

A part's name and content depend only on the input and `images_per_part`; `fingerprint`
hashes them, so a rerun into the same output can check it is resuming the same job.
No TensorFlow and no Ray here: the listing runs before either starts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass

from job import storage
from job.data import shards
from job.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
DEFAULT_IMAGES_PER_PART = 1000
KIND_IMAGES = "images"
KIND_SHARD = "shard"


@dataclass(frozen=True)
class Part:
    """One unit of work and of output: a list of image files, or one data set shard."""

    name: str  # the output file's stem
    kind: str  # KIND_IMAGES or KIND_SHARD
    uris: tuple[str, ...]  # the image files, or the one shard
    count: int  # images in the part
    format: str = ""  # the shard's format (tfrecord, parquet); "" for image files


@dataclass(frozen=True)
class Inputs:
    """Every part of one `predict --data` input, and how its rows are keyed."""

    description: str  # for logs: what was found where
    parts: tuple[Part, ...]
    key_column: str  # "image" (the file's URI) or "id" (the data set's example id)

    @property
    def total_images(self) -> int:
        return sum(p.count for p in self.parts)

    @property
    def fingerprint(self) -> str:
        """A hash of every part's name and content: equal iff a rerun would do the same work."""
        listing = [[p.name, p.kind, list(p.uris), p.count, p.format] for p in self.parts]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:32]


def resolve_inputs(
    data_uri: str, splits: tuple[str, ...] = (), images_per_part: int = DEFAULT_IMAGES_PER_PART
) -> Inputs:
    """List the input at `data_uri` and cut it into parts.

    Args:
        data_uri: a data set folder, a CSV file, or a folder/prefix of images; local or s3://.
        splits: the data set splits to predict (a data set only; default: every non-empty one).
        images_per_part: images per output file for file inputs.
    Raises:
        UserError: nothing to predict, an unreadable CSV, splits given for a non-data set.
    """
    if images_per_part < 1:
        raise UserError(f"--images-per-part must be at least 1, got {images_per_part}.")
    data_uri = data_uri.rstrip("/")
    if storage.exists(storage.join(data_uri, shards.MANIFEST_NAME)):
        return _dataset_inputs(data_uri, splits)
    if splits:
        raise UserError(f"--split applies to a data set (a folder with {shards.MANIFEST_NAME}); {data_uri} is not one.")
    if data_uri.lower().endswith(".csv"):
        images = _csv_images(data_uri)
        where = f"listed in {data_uri}"
    else:
        images = [u for u in storage.list_files(data_uri) if u.lower().endswith(IMAGE_SUFFIXES)]
        where = f"under {data_uri}"
    if not images:
        raise UserError(
            f"No images {where}: looked for {', '.join(IMAGE_SUFFIXES)} files. Pass a folder or s3:// prefix of "
            "images, a CSV with an `image` column, or a data set folder."
        )
    parts = tuple(
        Part(
            name=f"part-{i // images_per_part:05d}",
            kind=KIND_IMAGES,
            uris=tuple(images[i : i + images_per_part]),
            count=len(images[i : i + images_per_part]),
        )
        for i in range(0, len(images), images_per_part)
    )
    return Inputs(f"{len(images)} images {where}", parts, key_column="image")


def _dataset_inputs(data_uri: str, splits: tuple[str, ...]) -> Inputs:
    manifest = shards.load_manifest(data_uri)
    unknown = [s for s in splits if s not in shards.SPLITS]
    if unknown:
        raise UserError(f"Unknown split(s) {unknown}; choose from {', '.join(shards.SPLITS)}.")
    chosen = [s for s in (splits or shards.SPLITS) if manifest.num_examples(s) > 0]
    if not chosen:
        raise UserError(f"The data set at {data_uri} has no examples in split(s) {', '.join(splits or shards.SPLITS)}.")
    parts = []
    for split in chosen:
        for i, (uri, shard) in enumerate(zip(manifest.shard_uris(data_uri, split), manifest.splits[split])):
            if shard.num_examples == 0:
                continue
            parts.append(
                Part(
                    name=f"{split}-{i:05d}",
                    kind=KIND_SHARD,
                    uris=(uri,),
                    count=shard.num_examples,
                    format=manifest.format,
                )
            )
    total = sum(p.count for p in parts)
    return Inputs(f"{total} examples of split(s) {', '.join(chosen)} of {data_uri}", tuple(parts), key_column="id")


def _csv_images(csv_uri: str) -> list[str]:
    """The image paths a CSV lists (`image` column, else the first), relative ones from its folder."""
    try:
        text = storage.read_text(csv_uri)
        rows = list(csv.reader(io.StringIO(text)))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{csv_uri} is not a readable CSV ({exc}).") from None
    if not rows:
        return []
    header = [h.strip() for h in rows[0]]
    column = header.index("image") if "image" in header else 0
    # A list without a header (`ls *.jpg > list.csv`): its first line is an image, not a name.
    headless = "image" not in header and header[:1] and header[0].lower().endswith(IMAGE_SUFFIXES)
    folder = storage.parent(csv_uri)
    images = []
    for line, row in enumerate(rows if headless else rows[1:], start=1 if headless else 2):
        if not row or not "".join(row).strip():
            continue
        if len(row) <= column or not row[column].strip():
            raise UserError(f"{csv_uri} line {line} has no image path in column {header[column]!r}.")
        path = row[column].strip()
        absolute = storage.is_s3(path) or path.startswith("/")
        images.append(path if absolute else storage.join(folder, path))
    return images
