"""Predict the labels of images with an exported model or a run's best checkpoint.

--model takes the folder written by `python -m job export` (a SavedModel) or a run (train's
--output; the model is then built in this process). A label is predicted when its
probability is above its threshold: the thresholds tuned on val, or 0.5 when there are none.

Results go to stdout (logs go to stderr), as a table or as JSON lines:
  {"image": "a.jpg", "labels": ["sea", "sunset"], "probabilities": {"desert": 0.01, ...},
   "thresholds": {"desert": 0.27, ...}}

An image above the model's pixel limit (the run's data.max_pixels, 40 Mpx by default; width x
height read from the file's header) is not decoded: it gets an `error:` line on stderr (and
with --format json a {"image": ..., "error": ...} line in its place), the other images are
predicted, and the command then exits 1 saying how many were refused.

Example:
  python -m job predict --model models/demo a.jpg b.png --format json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from job import storage
from job.errors import UserError

HELP = "Predict labels of images with an exported model or a run."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, metavar="DIR_OR_RUN", help="An exported SavedModel folder or a run (local or s3://)."
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="Image files (JPEG, PNG, GIF, BMP), local or s3://.")
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table (default) or json (one JSON object per line).",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="Images per model call (default 64).")


def _logs_to_stderr() -> None:
    """stdout carries the results only, so `--format json` output stays parseable."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)


def format_table(images: list[str], class_names: list[str], probabilities, decisions) -> str:
    """One row per image: path, predicted labels, every label's probability."""
    labels = [", ".join(n for n, d in zip(class_names, row) if d) or "(none)" for row in decisions]
    probs = ["  ".join(f"{n} {p:.3f}" for n, p in zip(class_names, row)) for row in probabilities]
    w_img = max(len("image"), *(len(i) for i in images))
    w_lab = max(len("labels"), *(len(label) for label in labels))
    lines = [f"{'image':<{w_img}}  {'labels':<{w_lab}}  probabilities"]
    lines += [f"{i:<{w_img}}  {label:<{w_lab}}  {p}" for i, label, p in zip(images, labels, probs)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: it loads TensorFlow, and `--help` must stay instant.
    from job.evaluation.export import load_predictor, model_pixel_limit, read_images

    _logs_to_stderr()
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}.")
    # A stalled or wrong endpoint fails here, in seconds: the model, and the first image on S3.
    storage.check_access(args.model)
    first_s3_image = next((i for i in args.images if storage.is_s3(i)), None)
    if first_s3_image:
        storage.check_access(first_s3_image)
    # Images above the model's pixel limit are refused from their header, never decoded.
    read = read_images(args.images, max_pixels=model_pixel_limit(args.model))
    for image, problem in read.refused:
        print(f"error: {image}: {problem}; not predicted", file=sys.stderr)
    rows = {image: {"image": image, "error": problem} for image, problem in read.refused}
    if read.data:
        predictor = load_predictor(args.model)
        result = predictor.predict(read.data, batch_size=args.batch_size)
        names = predictor.class_names
        for image, probs, decisions in zip(read.uris, result.probabilities, result.decisions):
            rows[image] = {
                "image": image,
                "labels": [n for n, d in zip(names, decisions) if d],
                "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs)},
                "thresholds": {n: round(float(t), 6) for n, t in zip(names, predictor.thresholds)},
            }
        if args.format == "table":
            print(format_table(read.uris, names, result.probabilities, result.decisions))
    if args.format == "json":
        for image in args.images:
            print(json.dumps(rows[image]))
    if read.refused:
        raise UserError(
            f"{len(read.refused)} of {len(args.images)} image(s) were not predicted: above the model's pixel "
            "limit (listed above). Downscale them; the limit is the run's data.max_pixels, which an "
            "exported model keeps."
        )
    return 0
