"""Export a run's best checkpoint as a TensorFlow SavedModel that a service can load alone.

The model carries the label names and the thresholds tuned on val (thresholds.json; 0.5 when
the run has none). Signatures:

  serving_default  images: string [None]  encoded JPEG/PNG bytes, decoded and resized as in training
  predict_images   pixels: float32 [None, S, S, 3]  RGB in [0, 255]

Both return probabilities (float32 [None, k]), decisions (bool [None, k]) and labels
(string [None], predicted names joined by spaces).

Example:
  python -m job export --run runs/demo --out models/demo
  python -m job predict --model models/demo photo.jpg
"""

from __future__ import annotations

import argparse

from job import storage

HELP = "Export a run's best checkpoint, labels and thresholds as a TensorFlow SavedModel."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="The run (train's --output), local or s3://.")
    parser.add_argument(
        "--out", required=True, help="Folder for the SavedModel, local or s3:// (new, empty, or an earlier export)."
    )


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: it loads TensorFlow, and `--help` must stay instant.
    from job.evaluation.export import export_run

    # Before TensorFlow loads: a stalled or wrong endpoint fails here, in seconds.
    storage.check_access(args.run)
    storage.check_access(args.out, write=True)
    info = export_run(args.run, args.out)
    thresholds = ", ".join(f"{n} {t:.3f}" for n, t in zip(info.class_names, info.thresholds))
    print(
        f"exported {info.checkpoint} to {info.out_uri}\n"
        f"  signatures: serving_default (encoded image bytes), predict_images (float32 pixels "
        f"[None, {info.image_size}, {info.image_size}, 3]), predict_base64 (base64 text; see docs/serving.md)\n"
        f"  labels: {', '.join(info.class_names)}\n"
        f"  thresholds ({info.thresholds_source}): {thresholds}"
    )
    return 0
