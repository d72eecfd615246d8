"""Ray overhead: the product's training on Ray Train vs the same training in a plain process.

Both runs use the product's own code on the same local TFRecord shards, with the demo preset
at the bench image size (small_cnn, batch 32, augmentation, per-epoch checkpoints):
- plain:  `loop.train_worker` in this process, fed by `pipeline.examples_from_shards`,
          checkpoints published by `local.LocalReporter` (what `train --local` does);
- ray N:  `driver._fit`: a local Ray sized by `driver.connect` (N workers x 1 CPU
          + 1 CPU for Ray Data), Ray Data `read_split`, `TensorflowTrainer` running
          `worker.worker_entry` -> `loop.train_worker` (MWMS when N > 1).
Evaluation is left out of both. Figures: the wall time of the whole call (including Ray's
start-up), and each epoch's own time from history.json (`epoch_seconds`, train +
validation, measured by the train loop itself); the first epoch (graph tracing) is warm-up.

    python -m bench.trainer --workdir /tmp/bench --runs plain,ray1 --result out.json
"""

from __future__ import annotations

import argparse
import os
import time

from bench import common

# Extra config overrides for every run (--set), for experiments.
EXTRA_SETTINGS: list[str] = []


def make_config(image_size: int, epochs: int, num_workers: int, ingest: str = "direct"):
    from job.config import load_config

    return load_config(
        os.path.join(common.REPO_ROOT, "configs", "demo.yaml"),
        [
            f"data.image_size={image_size}",
            f"training.epochs={epochs}",
            f"scaling.num_workers={num_workers}",
            f"data.ingest={ingest}",
            # The workers share the machine's cores, as the plain process has all of them (Ray
            # sizes each worker's OpenMP threads, and so oneDNN's, by its CPUs); Ray Data keeps one.
            f"scaling.cpus_per_worker={max(1, ((os.cpu_count() or 1) - (ingest == 'ray_data')) // num_workers)}",
            "telemetry.enabled=false",
            "training.early_stopping_patience_epochs=0",
            "training.reduce_lr_patience_epochs=0",
            *EXTRA_SETTINGS,
        ],
    )


def run_plain(data_uri: str, output_uri: str, image_size: int, epochs: int) -> dict:
    from job.launch.local import LocalReporter
    from job.launch.plan import plan_run
    from job.telemetry import WorkerTelemetry
    from job.training import loop

    cfg = make_config(image_size, epochs, 1)
    plan = plan_run(cfg, data_uri, output_uri, None, num_workers=1)
    worker_plan = plan.for_workers()
    source = loop.shard_files(data_uri, plan.manifest, cfg, worker_plan, loop.WorkerInfo())
    start = time.perf_counter()
    history = loop.train_worker(
        cfg,
        worker_plan,
        loop.WorkerInfo(),
        train_examples=source.train,
        val_examples=source.val,
        reporter=LocalReporter(plan.run_uri, cfg.checkpoint.keep_best),
        telemetry=WorkerTelemetry(plan.run_name, 0, None, enabled=False),
    )
    return _summary(time.perf_counter() - start, history, plan)


def run_ray(data_uri: str, output_uri: str, image_size: int, epochs: int, num_workers: int, ingest: str) -> dict:
    from job.cluster import driver
    from job.launch.plan import plan_run
    from job.telemetry import DriverTelemetry

    cfg = make_config(image_size, epochs, num_workers, ingest)
    plan = plan_run(cfg, data_uri, output_uri, None, num_workers=num_workers)
    start = time.perf_counter()
    history = driver._fit(cfg, plan, DriverTelemetry(plan.run_name, None, enabled=False))
    return _summary(time.perf_counter() - start, history, plan)


def _summary(wall: float, history: list[dict], plan) -> dict:
    """Figures of one run. The epoch cost is the time from one epoch's start to the next's:
    training, validation and that epoch's checkpoint (a synchronous save blocks; an asynchronous
    upload slows the next epoch instead), so both kinds of run pay for their checkpoints."""
    epochs = [round(float(h["epoch_seconds"]), 2) for h in history]
    starts = [float(h["epoch_start_time"]) for h in history]
    periods = [round(b - a, 2) for a, b in zip(starts, starts[1:])]
    steady = periods[1:] if len(periods) > 1 else periods or epochs  # the first epoch traces graphs
    images = plan.steps_per_epoch * plan.global_batch_size
    return {
        "wall_seconds": round(wall, 1),
        "epoch_seconds": epochs,
        "epoch_periods": periods,
        "median_epoch_seconds": round(common.median(steady), 2),
        "startup_seconds": round(wall - sum(epochs), 1),  # start-up, checkpoints, shutdown
        "train_images_per_epoch": images,
        "steps_per_epoch": plan.steps_per_epoch,
        "global_batch_size": plan.global_batch_size,
    }


RUNS = ("plain", "ray1", "ray1_ray_data", "ray2", "ray2_ray_data")


def run(name: str, data_uri: str, workdir: str, image_size: int, epochs: int) -> dict:
    """One run by name: plain, or rayN[_ray_data] (N workers, the direct or the Ray Data ingest path)."""
    output_uri = os.path.join(os.path.abspath(workdir), "runs", f"{name}-{int(time.time() * 1000)}")
    if name == "plain":
        return run_plain(data_uri, output_uri, image_size, epochs)
    workers, _, path = name[3:].partition("_")
    return run_ray(data_uri, output_uri, image_size, epochs, int(workers), path or "direct")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--runs", default="plain,ray1", help=f"Comma list of {', '.join(RUNS)}.")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="Run the list this many times in turn (ABAB...): each round's runs form a pair for the ratios.",
    )
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--set", action="append", default=[], help="A config override for every run (KEY=VALUE).")
    p.add_argument("--result", required=True)
    args = p.parse_args()
    common.quiet_logs()
    EXTRA_SETTINGS.extend(args.set)

    from bench.data import dataset_dir

    names = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = set(names) - set(RUNS)
    if unknown:
        raise SystemExit(f"unknown run(s) {sorted(unknown)}; choose from {', '.join(RUNS)}")
    data_uri = os.path.abspath(dataset_dir(args.workdir, "tfrecord"))
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            summary = run(name, data_uri, args.workdir, args.image_size, args.epochs)
            summary["load_average"] = common.load_average()
            rounds[name].append(summary)
    out = {
        name: dict(
            runs[-1],
            median_epoch_seconds=round(common.median([r["median_epoch_seconds"] for r in runs]), 2),
            round_epoch_seconds=[r["median_epoch_seconds"] for r in runs],
        )
        for name, runs in rounds.items()
    }
    ratios = {
        f"{name}_over_plain": common.pair_ratio(
            [r["median_epoch_seconds"] for r in rounds[name]], [r["median_epoch_seconds"] for r in rounds["plain"]]
        )
        for name in names
        if name != "plain" and "plain" in rounds
    }
    common.write_result(
        args.result,
        {"runs": out, "ratios": ratios, "rounds": args.rounds, "image_size": args.image_size, "epochs": args.epochs},
    )


if __name__ == "__main__":
    main()
