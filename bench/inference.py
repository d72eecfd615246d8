"""Batch inference: `predict --data` on Ray Data (1 and 2 CPU actors) vs the single-process `predict`.

The same 2,000 JPEGs (a local folder, the bench image size) and the same exported model (the
demo preset, trained one epoch on the bench data) go through three commands, run as a user
runs them, round-robin so that load on the machine hits all three alike:

    single:  python -m job predict --model M --format json IMAGE...  (one process)
    ray1:    python -m job predict --model M --data DIR --output OUT --actors 1
    ray2:    ... --actors 2
    auto:    ... with the default pool (one actor per GPU when there are GPUs; bench/gpu.sh)

Figures per command: the whole command's wall time (Python, TensorFlow and Ray start-up
included: what a user waits for) and images/s over it; the steady images/s, start-up
excluded: for the Ray runs between the first and the last part file written, for single
from its wall time less that of the same command on one image; the peak memory of all its processes
together (the sum of their proportional set sizes, sampled every 0.2 s, so shared pages such
as Ray's object store count once); ratios to single as the median of per-round pairs.

    python -m bench.inference --workdir /tmp/multilabel-bench --result out.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time

from bench import common

NUM_IMAGES = 2000
RUNS = ("single", "ray1", "ray2", "auto")


def ensure_images(workdir: str, num_images: int, image_size: int) -> list[str]:
    """A folder of `num_images` synthetic JPEGs at `image_size` (kept between runs)."""
    folder = os.path.join(workdir, f"inference-images-{num_images}-{image_size}")
    if os.path.isdir(folder) and len(os.listdir(folder)) == num_images:
        return sorted(os.path.join(folder, n) for n in os.listdir(folder))
    from job.data import shards
    from job.data.splits import write_synthetic
    from job.data.synthetic import SceneSpec

    source = folder + "-set"
    write_synthetic(
        source, SceneSpec(image_size=image_size), num_images=num_images, seed=11, progress=False, overwrite=True
    )
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    manifest = shards.load_manifest(source)
    for split in shards.SPLITS:
        for _, example in shards.read_split(source, manifest, split):
            with open(os.path.join(folder, f"{example.id}.jpg"), "wb") as fh:
                fh.write(example.image)
    shutil.rmtree(source)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder))


def ensure_model(workdir: str, image_size: int, backbone: str) -> str:
    """The demo preset (with `backbone`) at the bench image size, trained one epoch on the bench data, exported."""
    from bench.data import dataset_dir, ensure_datasets

    ensure_datasets(workdir, 1000, image_size)
    model = os.path.join(workdir, f"inference-model-{backbone}-{image_size}")
    if os.path.exists(os.path.join(model, "saved_model.pb")):
        return model
    run = os.path.join(workdir, f"inference-run-{backbone}-{image_size}")
    shutil.rmtree(run, ignore_errors=True)
    job = [sys.executable, "-m", "job"]
    subprocess.run(
        [
            *job,
            "train",
            "--local",
            "--config",
            "configs/demo.yaml",
            "--data",
            dataset_dir(workdir, "tfrecord"),
            "--output",
            run,
            "--set",
            f"data.image_size={image_size}",
            "--set",
            f"model.backbone={backbone}",
            "--set",
            "training.epochs=1",
            "--set",
            "telemetry.enabled=false",
        ],
        cwd=common.REPO_ROOT,
        check=True,
        timeout=900,
    )
    subprocess.run([*job, "export", "--run", run, "--out", model], cwd=common.REPO_ROOT, check=True, timeout=300)
    return model


class MemorySampler:
    """Peak of the summed PSS of every process in one session (a command and all it started)."""

    def __init__(self, session: int, every_seconds: float = 0.2):
        self.session, self.every, self.peak = session, every_seconds, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self._total())

    def _total(self) -> int:
        total = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getsid(int(pid)) != self.session:
                    continue
                with open(f"/proc/{pid}/smaps_rollup") as fh:
                    total += next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))
            except (OSError, StopIteration, ProcessLookupError):
                continue  # gone, or not ours to read
        return total

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_once(name: str, model: str, images: list[str], workdir: str) -> dict:
    folder = os.path.dirname(images[0])
    if name == "single":
        args = ["predict", "--model", model, "--format", "json", *images]
    else:
        out = os.path.join(workdir, "inference-out", f"{name}-{int(time.time() * 1000)}")
        args = ["predict", "--model", model, "--data", folder, "--output", out, "--images-per-part", "250"]
        args += [] if name == "auto" else ["--actors", name[3:]]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", *args],
        cwd=common.REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sampler = MemorySampler(proc.pid)
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        peak = sampler.stop()
        common.kill_group(proc)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} exited {proc.returncode}:\n{err[-3000:]}")
    result = {"wall_seconds": round(wall, 2), "images_per_second": round(len(images) / wall, 1), "peak_pss_bytes": peak}
    if name != "single":
        result["steady_images_per_second"] = steady_rate(out)
    return result


def steady_rate(output: str) -> float | None:
    """Images/s between the first and the last part file written: the pool at work, start-up excluded.

    Exact when parts finish one after another (one decode task at a time, as on 2 cores); with
    k parts in flight it reads high by up to (N-1)/(N-k).
    """
    import pyarrow.parquet as pq

    parts = sorted((os.path.getmtime(p), pq.read_metadata(p).num_rows) for p in _parts(output))
    if len(parts) < 2 or parts[-1][0] <= parts[0][0]:
        return None
    return round(sum(rows for _, rows in parts[1:]) / (parts[-1][0] - parts[0][0]), 1)


def _parts(output: str) -> list[str]:
    return [os.path.join(output, n) for n in os.listdir(output) if n.endswith(".parquet")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-images", type=int, default=NUM_IMAGES)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", default="single,ray1,ray2", help=f"Comma list of {', '.join(RUNS)}.")
    p.add_argument("--backbone", default="small_vgg", help="The model's backbone (the demo preset's by default).")
    p.add_argument("--result", required=True)
    args = p.parse_args()
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    if set(names) - set(RUNS) or "single" not in names:
        raise SystemExit(f"--runs: a comma list of {', '.join(RUNS)} that includes single")
    images = ensure_images(args.workdir, args.num_images, args.image_size)
    model = ensure_model(args.workdir, args.image_size, args.backbone)
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            rounds[name].append(run_once(name, model, images, args.workdir))
            if name == "single":
                # Its start-up (Python, TensorFlow, the model) from the same command on one image.
                startup = run_once(name, model, images[:1], args.workdir)["wall_seconds"]
                rounds[name][-1]["steady_images_per_second"] = round(
                    (len(images) - 1) / max(1e-9, rounds[name][-1]["wall_seconds"] - startup), 1
                )
                rounds[name][-1]["startup_seconds"] = startup
            print(name, rounds[name][-1], flush=True)
    shutil.rmtree(os.path.join(args.workdir, "inference-out"), ignore_errors=True)
    runs = {
        name: {
            "images_per_second": common.median([r["images_per_second"] for r in rs]),
            "wall_seconds": common.median([r["wall_seconds"] for r in rs]),
            "peak_pss_bytes": max(r["peak_pss_bytes"] for r in rs),
            "steady_images_per_second": common.median([r.get("steady_images_per_second") or 0 for r in rs]) or None,
            "rounds": rs,
        }
        for name, rs in rounds.items()
    }
    ratios = {}
    for name in [n for n in names if n != "single"]:
        for figure, suffix in (("images_per_second", ""), ("steady_images_per_second", "_steady")):
            mine = [r.get(figure) for r in rounds[name]]
            theirs = [r.get(figure) for r in rounds["single"]]
            if None not in mine + theirs:
                ratios[f"{name}{suffix}_over_single"] = common.pair_ratio(mine, theirs)
    common.write_result(
        args.result,
        {
            "num_images": len(images),
            "image_size": args.image_size,
            "model": f"demo preset ({args.backbone}), trained 1 epoch, exported",
            "runs": runs,
            "ratios": ratios,
        },
    )


if __name__ == "__main__":
    main()
