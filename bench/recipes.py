"""Recipe comparisons on the objects family: backbones, augmentation, losses (BCE vs ASL), LR schedules.

    python -m bench.recipes [--workdir /tmp/multilabel-recipes] [--seeds 1 2] [--out docs/recipes.json]

Every run is the same command a user types (`python -m job train --local --config demo`),
single process for a quiet machine, same data, same seed, same epochs; only the compared
setting changes. Runs of one comparison are interleaved seed by seed. Prints a Markdown
table per comparison (the tables in docs/training.md) and writes the raw figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

# Label probabilities from 0.03 to 0.5: a long tail, as in real label sets.
IMBALANCED = [round(0.03 + i * (0.5 - 0.03) / 9, 3) for i in range(10)]

COMPARISONS = {
    "backbone": {
        "data": "objects",
        "runs": {
            "small_cnn (3 blocks, the old default)": ["model.backbone=small_cnn"],
            "small_vgg (the demo preset)": ["model.backbone=small_vgg"],
        },
    },
    "augment": {
        "data": "objects",
        "runs": {
            "none": ["data.augment=[]"],
            "flip_left_right, brightness, contrast (the demo preset)": [
                "data.augment=[flip_left_right,brightness,contrast]"
            ],
        },
    },
    "loss": {
        "data": "objects-imbalanced",
        "runs": {
            "bce": ["training.loss=bce"],
            "asymmetric (4, 0, 0.05)": ["training.loss=asymmetric"],
        },
    },
    "schedule": {
        "data": "objects",
        "runs": {
            "constant": ["training.schedule=constant"],
            "plateau (the seed's)": ["training.schedule=plateau"],
            "cosine, 1 epoch warm-up": ["training.schedule=cosine"],
        },
    },
}


def _job(*args: str, timeout: float = 1800) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "job", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"python -m job {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def make_data(workdir: str) -> dict[str, str]:
    paths = {"objects": os.path.join(workdir, "objects"), "objects-imbalanced": os.path.join(workdir, "imbalanced")}
    if not os.path.exists(os.path.join(paths["objects"], "dataset.json")):
        _job("synth", "--kind", "objects", "--num-images", "3000", "--out", paths["objects"], "--quiet")
    if not os.path.exists(os.path.join(paths["objects-imbalanced"], "dataset.json")):
        probabilities = [str(p) for p in IMBALANCED]
        _job("synth", "--kind", "objects", "--num-images", "3000", "--out", paths["objects-imbalanced"], "--quiet",
             "--label-probability", *probabilities)  # fmt: skip
    return paths


def train(data: str, run: str, seed: int, overrides: list[str]) -> dict:
    sets = [f"training.seed={seed}", "telemetry.enabled=false", *overrides]
    start = time.perf_counter()
    _job("train", "--local", "--config", "demo", "--data", data, "--output", run,
         *[arg for s in sets for arg in ("--set", s)])  # fmt: skip
    seconds = time.perf_counter() - start
    with open(os.path.join(run, "metrics.json")) as fh:
        test = json.load(fh)["test"]
    return {
        "seconds": seconds,
        "macro_f1": test["macro_f1"],
        "mean_average_precision": test["mean_average_precision"],
        "rarest_label_f1": min(test["per_label"].values(), key=lambda r: r["support"])["f1"],
    }


def _cell(runs: list[dict], key: str, fmt: str = ".3f") -> str:
    """The median over seeds, with the range when there are several."""
    values = sorted(r[key] for r in runs)
    spread = f" ({values[0]:{fmt}}-{values[-1]:{fmt}})" if len(values) > 1 else ""
    return f"{statistics.median(values):{fmt}}{spread}"


def table(name: str, results: dict[str, list[dict]]) -> str:
    lines = [
        f"| {name} | test macro-F1 (0.5) | test mAP | F1 of the rarest label | wall s |",
        "|---|---|---|---|---|",
    ]
    for label, runs in results.items():
        cells = [_cell(runs, key) for key in ("macro_f1", "mean_average_precision", "rarest_label_f1")]
        lines.append(f"| {label} | {' | '.join(cells)} | {_cell(runs, 'seconds', '.0f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/multilabel-recipes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--only", choices=list(COMPARISONS), nargs="+", default=list(COMPARISONS))
    parser.add_argument("--out", default=None, help="Also write the raw figures here (JSON).")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    data = make_data(args.workdir)
    raw: dict[str, dict[str, list[dict]]] = {}
    for name in args.only:
        comparison = COMPARISONS[name]
        results: dict[str, list[dict]] = {label: [] for label in comparison["runs"]}
        for seed in args.seeds:  # interleaved: every setting once per seed, then the next seed
            for label, overrides in comparison["runs"].items():
                slug = "".join(c if c.isalnum() else "-" for c in label)
                run = os.path.join(args.workdir, "runs", f"{name}-{slug}-seed{seed}")
                shutil.rmtree(run, ignore_errors=True)  # a leftover run would be resumed, not retrained
                results[label].append(train(data[comparison["data"]], run, seed, overrides))
                print(f"{name} / {label} / seed {seed}: {results[label][-1]}", flush=True)
        raw[name] = results
        print(f"\n{name} on {comparison['data']}, seeds {args.seeds}:\n{table(name, results)}\n", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"seeds": args.seeds, "label_probabilities": IMBALANCED, "results": raw}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
