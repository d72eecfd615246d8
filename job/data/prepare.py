"""Turning the user's own images into a data set: a folder of images plus a labels CSV.

Input (the common layout of public multi-label sets)::

    labels.csv                    images/
    image,labels                  img/0001.jpg
    img/0001.jpg,sea sunset       img/0002.png
    img/0002.png,trees
    img/0003.jpg,                 (no labels is allowed: an all-zero row)

Everything that can be wrong with the input is found before anything is written: missing
columns, an empty CSV, and per row a missing image file, an unknown label (with
`--classes`), a repeated image, or an image that does not decode (or, passed through, that
TensorFlow could not decode). Each problem names the CSV row (row 1 is the header). With
`skip_bad_rows` those rows are left out and reported instead.

Images are passed through byte for byte, or re-encoded as JPEG (optionally resized).
Reading, checking and re-encoding run on a thread pool: PIL releases the GIL while it
decodes and encodes, and file reads overlap with shard encoding and upload.
Writing goes through `splits.write_dataset`, so the layout and dataset.json are the same
as `synth`'s.
"""

from __future__ import annotations

import collections
import csv
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from job import storage
from job.data import shards, splits
from job.data.image_limits import DEFAULT_MAX_PIXELS, check_pixel_limit, pixel_limit_problem
from job.data.labels import normalize_label, parse_label_field, to_multi_hot
from job.errors import UserError
from job.progress import Progress

REQUIRED_COLUMNS = ("image", "labels")
# Formats tf.io.decode_image reads; anything else must be re-encoded to be trainable.
PASS_THROUGH_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
DEFAULT_TARGET_SHARD_MB = 128.0
DEFAULT_MIN_TRAIN_SHARDS = 4
DEFAULT_JPEG_QUALITY = 90
BYTES_PER_MB = 1_000_000
# Bad rows listed in an error message; the rest are counted.
MAX_LISTED_ROWS = 10
# Images re-encoded up front to estimate shard sizes for --target-shard-mb with --reencode.
SIZE_SAMPLE_IMAGES = 32


def default_threads() -> int:
    """Threads for reading/checking/re-encoding: enough to hide file latency, bounded for memory."""
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


@dataclass(frozen=True)
class Row:
    """One CSV data row."""

    number: int  # CSV row number; the header is row 1
    image: str  # the `image` field: a path relative to the images folder
    path: str  # the file it names
    labels: tuple[str, ...]


@dataclass(frozen=True)
class BadRow:
    """A CSV row that cannot be used, and why."""

    number: int
    image: str
    problem: str

    def describe(self, csv_name: str) -> str:
        return f"{csv_name} row {self.number} ({self.image or 'no image'}): {self.problem}"


@dataclass(frozen=True)
class PrepareOptions:
    """How to turn the images and CSV into shards (the CLI's options)."""

    fmt: str = "tfrecord"
    """Shard format: "tfrecord" or "parquet"."""
    classes: tuple[str, ...] | None = None
    """Label order; None means the sorted unique label names of the usable rows."""
    val_fraction: float = 0.15
    """Share of images in the val split."""
    test_fraction: float = 0.15
    """Share of images in the test split."""
    seed: int = 0
    """Seed of the split: the same seed and CSV give the same shards."""
    num_shards: int | None = None
    """Train shards; None means from target_shard_mb."""
    target_shard_mb: float | None = None
    """Approximate shard size in MB (10^6 bytes); None means 128 MB with at least 4 train shards."""
    reencode: bool = False
    """Decode and save every image as JPEG instead of passing the bytes through."""
    image_size: int | None = None
    """With reencode: resize so the shorter side is this many pixels (never enlarges)."""
    jpeg_quality: int | None = None
    """With reencode: JPEG quality, 1..95 (None means 90)."""
    skip_bad_rows: bool = False
    """Leave out bad rows (and report them) instead of stopping."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """An image above this many pixels (width x height, read from its header) is a bad row."""
    allow_outside: bool = False
    """Accept rows whose file resolves outside the images folder (e.g. a folder of symlinks)."""
    overwrite: bool = False
    """Replace a data set already at the output (atomically; readers keep the old one until done)."""
    threads: int = field(default_factory=default_threads)
    """Threads that read, check and re-encode images."""

    @property
    def quality(self) -> int:
        """The JPEG quality re-encoding uses."""
        return DEFAULT_JPEG_QUALITY if self.jpeg_quality is None else self.jpeg_quality

    def check(self) -> None:
        """Raises UserError for option values or combinations that cannot work."""
        if self.fmt not in shards.FORMATS:
            raise UserError(f"--format must be one of {', '.join(shards.FORMATS)}, got {self.fmt!r}.")
        if self.num_shards is not None and self.target_shard_mb is not None:
            raise UserError("Give --num-shards or --target-shard-mb, not both.")
        if self.num_shards is not None and self.num_shards < 1:
            raise UserError(f"--num-shards must be at least 1, got {self.num_shards}.")
        if self.target_shard_mb is not None and not self.target_shard_mb > 0:
            raise UserError(f"--target-shard-mb must be above 0, got {self.target_shard_mb}.")
        if not self.reencode and (self.image_size is not None or self.jpeg_quality is not None):
            raise UserError(
                "--image-size and --jpeg-quality only apply with --reencode; add --reencode "
                "or drop them (without it image bytes are copied unchanged)."
            )
        if self.image_size is not None and self.image_size < 8:
            raise UserError(f"--image-size must be at least 8 pixels, got {self.image_size}.")
        if not 1 <= self.quality <= 95:
            raise UserError(f"--jpeg-quality must be in 1..95, got {self.jpeg_quality}.")
        if self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}.")
        if self.max_pixels < 1:
            raise UserError(f"--max-pixels must be at least 1, got {self.max_pixels}.")
        if self.classes is not None:
            check_class_names(self.classes)


@dataclass(frozen=True)
class PrepareResult:
    """What `prepare_dataset` wrote and what it left out."""

    manifest: shards.Manifest
    rows: int  # data rows in the CSV
    skipped: list[BadRow]
    seconds: float

    @property
    def num_images(self) -> int:
        return sum(self.manifest.num_examples(s) for s in self.manifest.splits)


# ---------------------------------------------------------------------------- the CSV


def parse_classes(text: str) -> tuple[str, ...]:
    """`--classes a,b,c` -> ("a", "b", "c"), checked."""
    names = tuple(normalize_label(n.strip()) for n in text.split(",") if n.strip())
    check_class_names(names)
    return names


def check_class_names(names: Sequence[str]) -> None:
    if not names:
        raise UserError("--classes is empty; list the label names in output order, e.g. --classes sea,sunset,trees.")
    seen = collections.Counter(names)
    repeated = sorted(n for n, c in seen.items() if c > 1)
    if repeated:
        raise UserError(f"--classes lists {', '.join(map(repr, repeated))} more than once; each label once, please.")
    spaced = [n for n in names if any(ch.isspace() for ch in n)]
    if spaced:
        raise UserError(
            f"class name(s) {', '.join(map(repr, spaced))} contain spaces, but the CSV's labels "
            "field is space-separated; rename them (e.g. with underscores)."
        )


def read_rows(labels_csv: str, images_dir: str) -> list[Row]:
    """Parse the labels CSV into rows (no file checks yet).

    Raises:
        UserError when the CSV is missing, empty, has no data rows or lacks a required column.
    """
    if not os.path.isfile(labels_csv):
        raise UserError(
            f"--labels {labels_csv}: no such file. Give the path of the CSV with columns {', '.join(REQUIRED_COLUMNS)}."
        )
    if not os.path.isdir(images_dir):
        raise UserError(
            f"--images {images_dir}: no such folder. Give the folder the CSV's image paths are relative to."
        )
    name = os.path.basename(labels_csv)
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise UserError(f"{labels_csv} is empty; it needs a header row `image,labels` and one row per image.")
            columns = [h.strip() for h in header]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise UserError(
                    f"{labels_csv} lacks column(s) {', '.join(missing)} (its header is: {', '.join(columns)}). "
                    f"The first row must name the columns `image` (a path relative to the images folder) and "
                    f"`labels` (space-separated label names), e.g.\n  image,labels\n  0001.jpg,sea sunset"
                )
            i_image, i_labels = columns.index("image"), columns.index("labels")
            rows = []
            # Row numbers as a spreadsheet shows them: the header is row 1.
            for number, fields in enumerate(reader, start=2):
                if not any(f.strip() for f in fields):
                    continue  # blank line
                image = fields[i_image].strip() if i_image < len(fields) else ""
                labels = fields[i_labels] if i_labels < len(fields) else ""
                rows.append(
                    Row(
                        number=number,
                        image=image,
                        path=os.path.join(images_dir, image),
                        labels=tuple(parse_label_field(labels)),
                    )
                )
    except UnicodeDecodeError as exc:
        raise UserError(f"{labels_csv} is not UTF-8 text ({exc}); save it as UTF-8 CSV.") from None
    except csv.Error as exc:
        raise UserError(f"{name} is not a valid CSV ({exc}).") from None
    if not rows:
        raise UserError(f"{labels_csv} has a header but no rows; add one row per image.")
    return rows


# ---------------------------------------------------------------------------- checking rows


def check_image_file(path: str, pass_through: bool, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """None if the file is an image we can use, else the problem in words.

    First the pixel count, from the header alone: an image above `max_pixels` is refused
    before anything decodes it (a 48 KB PNG can hold 20000 x 20000 pixels, ~1.2 GB decoded;
    PIL's own DecompressionBombError only comes at ~179 Mpx). Then it decodes the whole
    image (for JPEG at 1/8 scale, which still reads every byte, so a truncated file is
    caught at a fraction of the cost).
    """
    from PIL import Image

    if not os.path.exists(path):
        return f"image file not found: {path}"
    if not os.path.isfile(path):
        return f"not a file: {path}"
    try:
        with open(path, "rb") as fh:
            too_big = check_pixel_limit(fh, max_pixels, "--max-pixels")
    except OSError as exc:
        return f"the image cannot be read ({type(exc).__name__}: {exc})"
    if too_big:
        return too_big
    try:
        with Image.open(path) as im:
            fmt, mode, (width, height) = im.format, im.mode, im.size
            # The size of formats image_limits does not read (TIFF, WebP...): Image.open read the header only.
            too_big = pixel_limit_problem(width, height, max_pixels, "--max-pixels")
            if too_big:
                return too_big
            if fmt == "JPEG":
                im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            im.load()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
        return f"the image does not decode ({type(exc).__name__}: {exc})"
    if width < 1 or height < 1:
        return "the image is empty (0 pixels)"
    if pass_through:
        if fmt not in PASS_THROUGH_FORMATS:
            return (
                f"{fmt} images cannot be decoded by TensorFlow; re-encode them as JPEG with --reencode "
                f"(or convert the file)"
            )
        if fmt == "JPEG" and mode == "CMYK":
            return "CMYK JPEG cannot be decoded by TensorFlow; re-encode with --reencode"
    return None


def check_rows(
    rows: Sequence[Row],
    classes: Sequence[str] | None,
    *,
    images_dir: str,
    pass_through: bool,
    threads: int,
    allow_outside: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> tuple[list[Row], list[BadRow]]:
    """Split rows into usable ones and bad ones (each with its problem), keeping CSV order.

    A row is bad when its file resolves (symlinks and `..` followed) outside `images_dir`
    (unless `allow_outside`), when an earlier row reaches the same file or a file with the
    same bytes, when it has labels outside `classes`, or when its image is unusable.
    """
    bad: dict[int, BadRow] = {}
    known = set(classes) if classes is not None else None
    first_seen: dict[str, Row] = {}
    candidates = []
    for row in rows:
        if not row.image:
            bad[row.number] = BadRow(row.number, row.image, "the image field is empty")
            continue
        # The file the name really reaches: `a/../b.jpg`, `./b.jpg` and a symlink to b.jpg are b.jpg.
        real = os.path.realpath(row.path)
        if not allow_outside and not storage.is_within(real, images_dir):
            bad[row.number] = BadRow(
                row.number,
                row.image,
                f"resolves to {real}, outside --images {images_dir}; list files inside the folder "
                "(or pass --allow-outside if it holds symlinks to your image store on purpose)",
            )
            continue
        if real in first_seen:
            bad[row.number] = BadRow(row.number, row.image, _repeated(first_seen[real], "the same file as"))
            continue
        first_seen[real] = row
        if known is not None:
            unknown = [n for n in row.labels if n not in known]
            if unknown:
                bad[row.number] = BadRow(
                    row.number,
                    row.image,
                    f"unknown label(s) {', '.join(map(repr, unknown))}; --classes lists {', '.join(classes)}",
                )
                continue
        candidates.append(row)

    def check(row: Row) -> tuple[str | None, str | None]:
        """(the image's problem, or None and the sha256 of its bytes)."""
        problem = check_image_file(row.path, pass_through, max_pixels)
        return problem, None if problem else storage.sha256_file(row.path)

    bar = Progress("checking", unit="images", enabled=progress)
    same_content: dict[str, Row] = {}  # sha256 -> the first usable row with those bytes
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for done, (row, (problem, digest)) in enumerate(zip(candidates, pool.map(check, candidates)), start=1):
            if problem:
                bad[row.number] = BadRow(row.number, row.image, problem)
            elif digest in same_content:
                # A copy under another name: the same image with two label sets.
                bad[row.number] = BadRow(row.number, row.image, _repeated(same_content[digest], "the same content as"))
            else:
                same_content[digest] = row
            if done % 100 == 0 or done == len(candidates):
                bar.update(done, len(candidates))
    bar.close()
    good = [r for r in rows if r.number not in bad]
    return good, sorted(bad.values(), key=lambda b: b.number)


def _repeated(first: Row, relation: str) -> str:
    return (
        f"{relation} row {first.number} ({first.image}); list each image once, with all its labels "
        "(one image in two rows would train on two label sets and could land in two splits)"
    )


def bad_rows_error(bad: Sequence[BadRow], labels_csv: str, total: int) -> UserError:
    name = os.path.basename(labels_csv)
    listed = "\n".join(f"  - {b.describe(name)}" for b in bad[:MAX_LISTED_ROWS])
    more = f"\n  ... and {len(bad) - MAX_LISTED_ROWS} more" if len(bad) > MAX_LISTED_ROWS else ""
    return UserError(
        f"{len(bad)} of {total} rows in {labels_csv} cannot be used (row numbers count the header as row 1):\n"
        f"{listed}{more}\nFix those rows, or pass --skip-bad-rows to leave them out. Nothing was written."
    )


# ---------------------------------------------------------------------------- images


def load_image(path: str, reencode: bool, image_size: int | None, jpeg_quality: int) -> bytes:
    """The bytes to store: the file as is, or decoded, resized and saved as JPEG."""
    with open(path, "rb") as fh:
        data = fh.read()
    if not reencode:
        return data
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        if image_size is not None and im.format == "JPEG" and min(im.size) > image_size:
            # Let libjpeg decode at a reduced scale (never below the target): much less work.
            scale = image_size / min(im.size)
            im.draft("RGB", (math.ceil(im.width * scale), math.ceil(im.height * scale)))
        # Honour the EXIF orientation once here, so the stored pixels are upright.
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            # JPEG has no alpha; composite on white rather than letting transparent pixels go black.
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))
        else:
            im = im.convert("RGB")
        if image_size is not None and min(im.size) > image_size:
            scale = image_size / min(im.size)
            im = im.resize(
                (max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                Image.Resampling.BICUBIC,
                reducing_gap=3.0,
            )
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=jpeg_quality)
        return out.getvalue()


class _Prefetcher:
    """Loads images on a thread pool ahead of the (strictly ordered) consumer.

    `write_dataset` asks for example i in a known order; keeping a bounded window of reads in
    flight hides file latency and runs re-encoding in parallel, without holding the whole
    data set in memory.
    """

    def __init__(self, order: Iterable[int], load: Callable[[int], bytes], threads: int, window: int):
        self._order = collections.deque(int(i) for i in order)
        self._load = load
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prepare-read")
        self._inflight: collections.deque[tuple[int, Future]] = collections.deque()
        self._window = max(1, window)
        self._fill()

    def _fill(self) -> None:
        while self._order and len(self._inflight) < self._window:
            i = self._order.popleft()
            self._inflight.append((i, self._pool.submit(self._load, i)))

    def get(self, i: int) -> bytes:
        expected, future = self._inflight.popleft()
        if expected != i:  # write_dataset's calling order changed; fail loudly rather than mislabel
            raise RuntimeError(f"prefetch order mismatch: expected example {expected}, asked for {i}")
        self._fill()
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------- shard count


def train_shard_count(rows: Sequence[Row], train_idx: np.ndarray, options: PrepareOptions) -> int:
    """Train shards from --num-shards, or from the estimated bytes and the target shard size."""
    if options.num_shards is not None:
        return options.num_shards
    train_bytes = sum(os.path.getsize(rows[int(i)].path) for i in train_idx)
    if options.reencode and len(train_idx):
        sample = [rows[int(i)] for i in train_idx[:SIZE_SAMPLE_IMAGES]]
        before = sum(os.path.getsize(r.path) for r in sample)
        after = sum(len(load_image(r.path, True, options.image_size, options.quality)) for r in sample)
        train_bytes = train_bytes * after / max(before, 1)
    if options.target_shard_mb is not None:
        return max(1, math.ceil(train_bytes / (options.target_shard_mb * BYTES_PER_MB)))
    return max(DEFAULT_MIN_TRAIN_SHARDS, math.ceil(train_bytes / (DEFAULT_TARGET_SHARD_MB * BYTES_PER_MB)))


# ---------------------------------------------------------------------------- prepare


def check_output_outside_images(out: str, images_dir: str) -> None:
    """Refuse a local --out that is the images folder or inside it: the next prepare would see the shards."""
    if storage.is_within(out, images_dir):
        raise UserError(
            f"--out {out} is inside --images {images_dir}: the data set would be written among the images "
            "it is made from. Choose an --out outside the images folder."
        )


def prepare_dataset(
    images_dir: str, labels_csv: str, out: str, options: PrepareOptions = PrepareOptions(), progress: bool = True
) -> PrepareResult:
    """Check the images and CSV, then write them as a data set at `out` (local path or s3://).

    Args:
        images_dir: the folder the CSV's image paths are relative to.
        labels_csv: CSV with columns `image` and `labels` (space-separated names).
        out: data set root URI.
        options: format, classes, split, sharding, re-encoding, bad-row handling.
        progress: show progress bars on stderr.

    Returns:
        The manifest written, the CSV's row count and the rows skipped.

    Raises:
        UserError for bad input (before anything is written) or unusable storage.
    """
    start = time.perf_counter()
    options.check()
    check_output_outside_images(out, images_dir)
    rows = read_rows(labels_csv, images_dir)
    storage.check_access(out, write=True)
    splits.check_target(out, options.overwrite)

    good, bad = check_rows(
        rows,
        options.classes,
        images_dir=images_dir,
        pass_through=not options.reencode,
        threads=options.threads,
        allow_outside=options.allow_outside,
        max_pixels=options.max_pixels,
        progress=progress,
    )
    if bad and not options.skip_bad_rows:
        raise bad_rows_error(bad, labels_csv, len(rows))
    if not good:
        raise UserError(
            f"None of the {len(rows)} rows in {labels_csv} can be used; fix the rows listed above "
            f"(first: {bad[0].describe(os.path.basename(labels_csv))})."
        )

    class_names = (
        list(options.classes) if options.classes is not None else sorted({name for row in good for name in row.labels})
    )
    if not class_names:
        raise UserError(f"No row in {labels_csv} has any label; fill the `labels` column (space-separated names).")
    labels = np.stack([to_multi_hot(row.labels, class_names) for row in good]).astype(np.int64)
    assigned = splits.assign_splits(len(good), options.val_fraction, options.test_fraction, options.seed)
    num_train_shards = train_shard_count(good, assigned["train"], options)

    # write_dataset asks for examples split by split, each in index order.
    order = np.concatenate([assigned[name] for name in shards.SPLITS if len(assigned.get(name, []))])
    prefetch = _Prefetcher(
        order,
        lambda i: load_image(good[i].path, options.reencode, options.image_size, options.quality),
        threads=options.threads,
        window=4 * options.threads,
    )

    def make_example(i: int) -> shards.Example:
        try:
            image = prefetch.get(i)
        except (OSError, ValueError) as exc:
            # The file changed or vanished after the check.
            raise UserError(
                f"{os.path.basename(labels_csv)} row {good[i].number} ({good[i].image}): cannot read "
                f"the image while writing ({type(exc).__name__}: {exc})."
            ) from None
        return shards.Example(id=good[i].image, image=image, labels=labels[i])

    source = {
        "prepare": {
            "images": os.path.abspath(images_dir),
            "labels_csv": os.path.abspath(labels_csv),
            "labels_csv_sha256": storage.sha256_file(labels_csv),
            "rows": len(rows),
            "skipped_rows": [b.number for b in bad],
            "seed": options.seed,
            "val_fraction": options.val_fraction,
            "test_fraction": options.test_fraction,
            "reencode": options.reencode,
            "image_size": options.image_size,
            "jpeg_quality": options.quality if options.reencode else None,
        }
    }
    try:
        manifest = splits.write_dataset(
            out,
            class_names,
            options.fmt,
            assigned,
            make_example,
            num_train_shards,
            source,
            progress,
            options.overwrite,
        )
    finally:
        prefetch.close()
    return PrepareResult(manifest=manifest, rows=len(rows), skipped=bad, seconds=time.perf_counter() - start)
