"""Can a model tell two labels apart when its training data (almost) never shows them apart?

The user's story ends with: "if two classes (sea and sunset) always appear together, is it
possible to achieve 100% test accuracy for both without learning to differentiate them? Is
there a maximum amount of correlation beyond which the model gets confused?"

For each p in --probabilities this trains the same small CNN on synthetic scenes where sea
and sunset are tied with probability p (`SceneSpec(pairs=(("sea", "sunset", p),))`: when one
is drawn, the other is forced in with probability p; 1.0 = never apart), then tests it twice:

- on the test split of its own (equally correlated) data, as a user normally would;
- on a separately generated test set where the two labels are independent (no pair).

The table reports per-label F1 for sea and sunset on both, and, on the independent set, the
share of images carrying exactly one of the two where the model gets both decisions right
(and how often it "sees" the missing one). Thresholds are 0.5 throughout.

Run (about 6-8 minutes on 2 CPU cores):

    python -m job.experiments.correlation --out runs/correlation

Writes DIR/correlation.md (the table), DIR/correlation.json (every number), and keeps the
data sets and runs under DIR/data and DIR/runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from job.config import load_config
from job.console import setup_logging
from job.data import shards
from job.data.splits import write_synthetic
from job.data.synthetic import SceneSpec
from job.errors import UserError
from job.evaluation.loading import load_best_model, predict_split
from job.evaluation.scores import evaluate_predictions, sigmoid
from job.launch.local import run_local
from job.storage.run_store import RunStore

log = logging.getLogger(__name__)

PAIR = ("sea", "sunset")
DEFAULT_PROBABILITIES = (0.5, 0.8, 0.95, 1.0)


@dataclass(frozen=True)
class Row:
    """The result for one tie probability p."""

    p: float
    train_both: int
    train_only_first: int
    train_only_second: int
    own_test_f1_first: float
    own_test_f1_second: float
    indep_f1_first: float
    indep_f1_second: float
    indep_macro_f1_others: float
    exactly_one_images: int
    exactly_one_accuracy: float
    first_only_finds_first: float
    first_only_says_second: float
    second_only_finds_second: float
    second_only_says_first: float
    seconds: float


def experiment_config(epochs: int, seed: int, overrides: list[str] | tuple[str, ...] = ()):
    """The small CNN used for every p: width 16, 64 px, one process, no telemetry."""

    base = [
        "data.image_size=64",
        "data.batch_size_per_worker=32",
        "model.backbone=small_cnn",
        "model.width=16",
        "model.dropout_rate=0.1",
        f"training.epochs={epochs}",
        "training.learning_rate=0.003",
        f"training.seed={seed}",
        "training.reduce_lr_patience_epochs=2",
        "training.early_stopping_patience_epochs=0",
        "training.tensorboard=false",
        "scaling.num_workers=1",
        "telemetry.enabled=false",
        "evaluation.prediction_grid_images=16",
    ]
    return load_config(None, [*base, *overrides])


def make_data(root: str, p: float | None, num_images: int, seed: int, *, test_only: bool = False):
    """Write a synthetic data set; `p` ties sea and sunset (None: independent labels)."""

    spec = SceneSpec(image_size=64, pairs=(((*PAIR, p),) if p is not None else ()))
    if test_only:
        # Only the test split is used; train/val must still be non-empty for the layout.
        return write_synthetic(
            root,
            spec,
            num_images=num_images,
            seed=seed,
            num_shards=1,
            val_fraction=0.05,
            test_fraction=0.9,
            progress=False,
        )
    return write_synthetic(root, spec, num_images=num_images, seed=seed, num_shards=2, progress=False)


def score_independent(run_uri: str, data_uri: str, class_names: list[str]) -> dict:
    """Predict the independent test split with the run's best checkpoint and score the pair."""

    saved = RunStore(run_uri).read_config()
    cfg, names = saved.config, saved.class_names
    manifest = shards.load_manifest(data_uri)
    model, _ = load_best_model(run_uri, cfg, len(names))
    preds = predict_split(model, data_uri, manifest, "test", cfg)
    m = evaluate_predictions(preds.y_true, preds.logits, names, 0.5)
    i, j = names.index(PAIR[0]), names.index(PAIR[1])
    y = preds.y_true > 0
    decided = sigmoid(preds.logits) > 0.5
    only_first = y[:, i] & ~y[:, j]
    only_second = y[:, j] & ~y[:, i]
    one = only_first | only_second
    others = [n for n in names if n not in PAIR]
    return {
        "f1_first": m["per_label"][PAIR[0]]["f1"],
        "f1_second": m["per_label"][PAIR[1]]["f1"],
        "macro_f1_others": float(np.mean([m["per_label"][n]["f1"] for n in others])),
        "exactly_one_images": int(one.sum()),
        "exactly_one_accuracy": float(np.mean(np.all(decided[one][:, [i, j]] == y[one][:, [i, j]], axis=1))),
        "first_only_finds_first": _share(decided[only_first, i]),
        "first_only_says_second": _share(decided[only_first, j]),
        "second_only_finds_second": _share(decided[only_second, j]),
        "second_only_says_first": _share(decided[only_second, i]),
    }


def _share(flags: np.ndarray) -> float:
    """Share of True values; NaN for no images."""
    return float(np.mean(flags)) if flags.size else float("nan")


def run_experiment(
    out: str,
    probabilities=DEFAULT_PROBABILITIES,
    num_images: int = 2400,
    test_images: int = 800,
    epochs: int = 10,
    seed: int = 0,
) -> list[Row]:
    """Train one model per p and score each on its own and on the independent test set."""

    a, b = PAIR
    indep = os.path.join(out, "data", "independent")
    log.info("generating the independent test set (%d images, no pair) at %s", test_images, indep)
    make_data(indep, None, test_images, seed=seed + 1000, test_only=True)
    rows = []
    for p in probabilities:
        start = time.perf_counter()
        data = os.path.join(out, "data", f"p{p:g}")
        run = os.path.join(out, "runs", f"p{p:g}")
        log.info(
            "p=%g: generating %d images with %s and %s tied at p and training %d epochs", p, num_images, a, b, epochs
        )
        manifest = make_data(data, p, num_images, seed=seed)
        y = shards.read_labels(data, manifest, "train")
        i, j = manifest.class_names.index(a), manifest.class_names.index(b)
        metrics = run_local(experiment_config(epochs, seed), data, run)
        scores = score_independent(run, indep, manifest.class_names)
        own = metrics["test"]["per_label"]
        row = Row(
            p=float(p),
            train_both=int(np.sum((y[:, i] > 0) & (y[:, j] > 0))),
            train_only_first=int(np.sum((y[:, i] > 0) & (y[:, j] == 0))),
            train_only_second=int(np.sum((y[:, j] > 0) & (y[:, i] == 0))),
            own_test_f1_first=own[a]["f1"],
            own_test_f1_second=own[b]["f1"],
            indep_f1_first=scores["f1_first"],
            indep_f1_second=scores["f1_second"],
            indep_macro_f1_others=scores["macro_f1_others"],
            exactly_one_images=scores["exactly_one_images"],
            exactly_one_accuracy=scores["exactly_one_accuracy"],
            first_only_finds_first=scores["first_only_finds_first"],
            first_only_says_second=scores["first_only_says_second"],
            second_only_finds_second=scores["second_only_finds_second"],
            second_only_says_first=scores["second_only_says_first"],
            seconds=time.perf_counter() - start,
        )
        log.info("p=%g done in %.0f s: exactly-one accuracy %.3f", p, row.seconds, row.exactly_one_accuracy)
        rows.append(row)
    return rows


def format_table(rows: list[Row]) -> str:
    """The result as a markdown table."""
    a, b = PAIR
    header = [
        "p (tie)",
        f"train: both / only {a} / only {b}",
        f"own test F1 {a} / {b}",
        f"independent F1 {a} / {b}",
        "independent F1 other labels (macro)",
        "exactly-one accuracy (n)",
        f"only-{a} images: {a} found / {b} claimed",
        f"only-{b} images: {b} found / {a} claimed",
        "seconds",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{r.p:g}",
                    f"{r.train_both} / {r.train_only_first} / {r.train_only_second}",
                    f"{r.own_test_f1_first:.3f} / {r.own_test_f1_second:.3f}",
                    f"{r.indep_f1_first:.3f} / {r.indep_f1_second:.3f}",
                    f"{r.indep_macro_f1_others:.3f}",
                    f"{r.exactly_one_accuracy:.3f} ({r.exactly_one_images})",
                    f"{r.first_only_finds_first:.3f} / {r.first_only_says_second:.3f}",
                    f"{r.second_only_finds_second:.3f} / {r.second_only_says_first:.3f}",
                    f"{r.seconds:.0f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m job.experiments.correlation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="Local folder for the table, data sets and runs.")
    parser.add_argument(
        "--probabilities",
        type=float,
        nargs="+",
        default=list(DEFAULT_PROBABILITIES),
        metavar="P",
        help="Tie probabilities of sea and sunset (default 0.5 0.8 0.95 1.0).",
    )
    parser.add_argument("--num-images", type=int, default=2400, help="Images per correlated data set (default 2400).")
    parser.add_argument(
        "--test-images",
        type=int,
        default=800,
        help="Images generated for the independent set; 90%% go to its test split (default 800).",
    )
    parser.add_argument("--epochs", type=int, default=10, help="Training epochs per model (default 10).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data and the training (default 0).")
    args = parser.parse_args(argv)

    setup_logging(verbose=False)
    # Six training runs: only this experiment's own lines, not every run's epoch lines.
    logging.getLogger("job").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)

    try:
        for p in args.probabilities:
            if not 0.0 <= p <= 1.0:
                raise UserError(f"--probabilities must be in [0, 1], got {p}.")
        if os.path.exists(os.path.join(args.out, "runs")):
            raise UserError(
                f"{args.out} already holds runs from an earlier experiment (they would be resumed, "
                f"not retrained); choose a new --out folder or remove {args.out}."
            )
        start = time.perf_counter()
        rows = run_experiment(args.out, args.probabilities, args.num_images, args.test_images, args.epochs, args.seed)
        seconds = time.perf_counter() - start
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = " ".join(["python -m job.experiments.correlation", *(argv if argv is not None else sys.argv[1:])])
    table = format_table(rows)
    text = (
        f"# sea/sunset correlation experiment\n\n`{command}`\n\n{table}\n\n"
        f"Total wall time: {seconds:.0f} s ({os.cpu_count()} CPUs visible). Thresholds at 0.5; "
        f"{args.num_images} images per correlated set ({args.epochs} epochs), "
        f"{rows[0].exactly_one_images if rows else 0} independent test images with exactly one of "
        f"{PAIR[0]}/{PAIR[1]}.\n"
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "correlation.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(args.out, "correlation.json"), "w") as fh:
        json.dump({"command": command, "wall_seconds": seconds, "rows": [asdict(r) for r in rows]}, fh, indent=2)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
