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

Batch inference over many images (`--data URI --output URI`) runs on Ray Data, locally or on
the cluster in RAY_ADDRESS, exactly like `train`: --data is a data set folder (its splits,
or --split), a folder or s3:// prefix of images, or a CSV with an `image` column. The output
is one Parquet file per part of the input (scores per label, predicted labels at the
model's thresholds, an `error` column), then `_SUCCESS` with the counts. A rerun of the same
command skips the parts already written. An image that cannot be predicted is counted and
listed, and the job goes on (--fail-on-bad-image stops it instead).

Examples:
  python -m job predict --model models/demo a.jpg b.png --format json
  python -m job predict --model s3://bucket/models/demo --data s3://bucket/photos/ --output s3://bucket/predictions/photos
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
    parser.add_argument(
        "images", nargs="*", metavar="IMAGE", help="Image files (JPEG, PNG, GIF, BMP), local or s3://; or use --data."
    )
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table (default) or json (one JSON object per line).",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="Images per model call (default 64).")
    batch = parser.add_argument_group("batch inference on Ray Data (--data)")
    batch.add_argument(
        "--data", metavar="URI", help="A data set folder, a folder or s3:// prefix of images, or a CSV of image paths."
    )
    batch.add_argument("--output", metavar="URI", help="Folder or s3:// prefix for the Parquet results (required).")
    batch.add_argument("--split", action="append", default=[], help="Data set split(s) to predict (default: all).")
    batch.add_argument(
        "--actors", type=int, default=None, help="Model actors (default: one per GPU when there are GPUs, else 1)."
    )
    batch.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per model actor (default 1).")
    batch.add_argument(
        "--gpus-per-actor", type=float, default=None, help="GPUs per model actor (default: 1 when there are GPUs)."
    )
    batch.add_argument(
        "--images-per-part",
        type=int,
        default=1000,
        help="Images per output file for image folders and CSVs (default 1000): the unit a rerun skips.",
    )
    batch.add_argument(
        "--fail-on-bad-image", action="store_true", help="Stop at the first image that cannot be predicted."
    )


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
    _logs_to_stderr()
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.data is not None:
        return run_batch(args)
    _refuse_batch_flags(args)
    if not args.images:
        raise UserError("Pass image files to predict, or --data URI --output URI for batch inference.")
    # Imported here, after the argument checks: it loads TensorFlow (seconds), and `--help`
    # and a wrong argument must stay instant.
    from job.evaluation.export import load_predictor, model_pixel_limit, read_images

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


BATCH_ONLY = ("output", "split", "actors", "gpus_per_actor", "fail_on_bad_image")


def _refuse_batch_flags(args: argparse.Namespace) -> None:
    given = [name for name in BATCH_ONLY if getattr(args, name) not in (None, [], False)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UserError(f"{flags} apply to batch inference; add --data URI (or drop them to predict image files).")


def run_batch(args: argparse.Namespace) -> int:
    """`--data URI --output URI`: list and check everything, then predict on Ray Data."""
    from job.evaluation.batch_sources import resolve_inputs

    if args.images:
        raise UserError("Pass either image files or --data, not both.")
    if not args.output:
        raise UserError("--data needs --output URI: a folder or s3:// prefix for the Parquet results.")
    for name, value, low in (("--actors", args.actors, 1), ("--cpus-per-actor", args.cpus_per_actor, 0)):
        if value is not None and value < low:
            raise UserError(f"{name} must be at least {low}, got {value}.")
    if args.gpus_per_actor is not None and args.gpus_per_actor < 0:
        raise UserError(f"--gpus-per-actor must be 0 or more, got {args.gpus_per_actor}.")
    # Before TensorFlow and Ray load: a wrong path or endpoint fails here, in seconds.
    storage.check_access(args.model)
    storage.check_access(args.data)
    storage.check_access(args.output, write=True)
    inputs = resolve_inputs(args.data, tuple(args.split), args.images_per_part)

    from job.cluster.batch_predict import ModelInfo, PoolSettings, hide_gpus_from_tensorflow, predict_dataset
    from job.evaluation.export import load_predictor

    # Loaded here once, on the CPU (the GPUs are the model actors'): a model that does not
    # load fails before any cluster work starts.
    hide_gpus_from_tensorflow()
    predictor = load_predictor(args.model)
    model = ModelInfo(
        uri=args.model.rstrip("/"),
        class_names=list(predictor.class_names),
        thresholds=predictor.thresholds,
        image_size=int(predictor.image_size),
        max_pixels=predictor.max_pixels,
        identity=predictor.identity,
    )
    del predictor
    pool = PoolSettings(
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
        batch_size=args.batch_size,
    )
    record = predict_dataset(model, inputs, args.output.rstrip("/"), pool, fail_on_bad_image=args.fail_on_bad_image)
    print(json.dumps({k: v for k, v in record.items() if k != "bad_listed"}))
    return 0
