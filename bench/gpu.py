"""GPU training throughput: synthetic data vs the real input pipeline, per precision mode and ingest path.

For ResNet50 and Xception at 224 px, batch 256 (weights none), it times training steps in
FP32, mixed precision, and mixed precision + XLA (through `job.training.model.build_model`,
`compile_model` and `set_precision_policy`), first on one synthetic batch held on the device
(the model's ceiling), then fed by the product's input pipeline through each ingest path
(`data.ingest` in job/config.py) in turn:

- `direct`: `pipeline.ShardFiles(data_uri, manifest, seed=0).train()` (each Ray worker's own
  read of the shard files) -> `make_pipeline(training=True, repeat=True, drop_remainder=True)`;
- `ray_data`: `cluster.datasets.ray_dataset(data_uri, manifest, "train")` ->
  `Dataset.iter_batches(HANDOVER_BATCH_ROWS, numpy, prefetch_batches=2)` ->
  `pipeline.ReleasableBatches` -> `examples_from_batches` -> the same `make_pipeline`, as
  `cluster.worker.ray_data_sources` wires it. Here there is no Ray Train: this one process
  runs `ray.init(num_cpus=<all cores>)` and iterates the Dataset itself (a worker iterates
  its `get_dataset_shard` split of it). The Dataset is built once and Ray stays up for the
  whole run; Ray's read tasks share the machine's cores with tf.data's decoding.

The shards (TFRecord, `--num-images` synthetic scenes) are written to `--workdir`, then, with
`--data s3` (the default), uploaded to the embedded S3 server running in a child process
(`bench.common.SeparateS3`, as a remote S3 would be) and read from `s3://bench/datasets/tfrecord`
by both paths, the way a cluster worker reads them; `--data local` reads the local folder.

Output: one JSON line per configuration and ingest path, so every figure stays a number:
`ingest` ("direct" or "ray_data"), `real_images_per_second`, `real_over_synthetic`,
`seconds` (that real measurement, warm-up included), plus the configuration's
`synthetic_images_per_second` and `synthetic_seconds` (measured once per configuration and
repeated on its lines), `data` ("s3" or "local") and `how` (what was timed). A path that
fails gets an `error` line instead of figures; the others still run, and the exit status is
then 1. With --no-real: one line per configuration, `ingest` null, synthetic figures only.
`--result PATH` also writes all lines as a JSON list (rewritten after every line, so a run cut
short keeps what it measured). bench/gpu.sh runs the whole set, sized for about 10 minutes.

    bash bench/gpu.sh                              # or: python -m bench.gpu --workdir /tmp/bench-gpu
    python -m bench.gpu --quick --cpu               # smoke run on a CPU: tiny batch, one step

Mixed precision is float16 on a GPU; with --cpu it is bfloat16 (float16 matmuls are not
implemented on CPUs). XLA on CPU compiles, slowly; --quick keeps it to one step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback

from bench import common

MODES = {
    "fp32": ("float32", False),
    "mixed": ("mixed_float16", False),
    "mixed_xla": ("mixed_float16", True),
}
INGESTS = ("direct", "ray_data")
BUCKET = "bench"
NUM_CLASSES = 5  # the synthetic scenes' classes (checked against dataset.json)

HOW = {
    "synthetic": "one synthetic batch held on the device, repeated (the model's ceiling)",
    "direct": "ShardFiles(data_uri, manifest, seed=0).train() -> make_pipeline(training=True, repeat=True, "
    "drop_remainder=True), in this process (a Ray worker's direct read, without Ray Train)",
    "ray_data": "ray_dataset(data_uri, manifest, 'train') built once -> Dataset.iter_batches(HANDOVER_BATCH_ROWS, "
    "numpy, prefetch_batches=2) -> ReleasableBatches -> examples_from_batches -> make_pipeline(training=True, "
    "repeat=True, drop_remainder=True); no Ray Train: this process iterates the whole Dataset (not a "
    "get_dataset_shard split), ray.init(num_cpus=all cores) shares them with tf.data",
}


def _time_steps(model, iterator, warmup: int, steps: int, batch_size: int) -> float:
    """Images/s over `steps` training steps after `warmup` steps (results fetched to sync)."""
    step = model.make_train_function()
    for _ in range(warmup):
        logs = step(iterator)
    float(logs["loss"])  # wait for the device
    start = time.perf_counter()
    for _ in range(steps):
        logs = step(iterator)
    float(logs["loss"])
    return steps * batch_size / (time.perf_counter() - start)


class Inputs:
    """The real data for every configuration: where the shards are, and Ray's Dataset over them."""

    def __init__(self, data_uri: str, manifest, ray_train_dataset=None):
        self.data_uri = data_uri
        self.manifest = manifest
        self.ray_train_dataset = ray_train_dataset

    def examples(self, ingest: str):
        """(train examples for make_pipeline, release callback or None) for one ingest path."""
        from job.data import pipeline

        if ingest == "direct":
            return pipeline.ShardFiles(self.data_uri, self.manifest, seed=0).train(), None
        from job.cluster.worker import HANDOVER_BATCH_ROWS

        ds = self.ray_train_dataset
        source = pipeline.ReleasableBatches(
            lambda: ds.iter_batches(batch_size=HANDOVER_BATCH_ROWS, batch_format="numpy", prefetch_batches=2)
        )
        return pipeline.examples_from_batches(source, len(self.manifest.class_names)), source.release


def _measure_real(model, ingest: str, inputs: Inputs, args) -> float:
    from job.config import DataConfig
    from job.data import pipeline

    b = args.batch_size
    cfg = DataConfig(image_size=args.image_size, batch_size_per_worker=b)
    examples, release = inputs.examples(ingest)
    iterator = None
    try:
        real = pipeline.make_pipeline(examples, cfg, training=True, batch_size=b, repeat=True, drop_remainder=True)
        iterator = iter(real)
        return _time_steps(model, iterator, args.warmup, args.steps, b)
    finally:
        if release is not None:
            release()  # ends the Ray Data pass the iterator is in, before the iterator goes
        del iterator


def run_config(backbone: str, mode: str, args, inputs: Inputs | None) -> list[dict]:
    """This configuration's lines: one per ingest path (one synthetic-only line without inputs)."""
    import tensorflow as tf
    import tf_keras

    from job.training.model import build_model, compile_model, set_precision_policy

    precision, xla = MODES[mode]
    if args.cpu and precision == "mixed_float16":
        precision = "mixed_bfloat16"
    tf_keras.backend.clear_session()
    set_precision_policy(precision)
    try:
        model = build_model(backbone, NUM_CLASSES, args.image_size, weights="none", precision=precision)
        compile_model(model, learning_rate=1e-3, jit_compile=xla)
        b = args.batch_size
        images = tf.random.uniform([b, args.image_size, args.image_size, 3], 0, 255, dtype=tf.float32)
        labels = tf.cast(tf.random.uniform([b, NUM_CLASSES]) > 0.5, tf.float32)
        synthetic = tf.data.Dataset.from_tensors((images, labels)).repeat()
        if not args.cpu:
            synthetic = synthetic.apply(tf.data.experimental.prefetch_to_device("/GPU:0", 2))
        base = {
            "backbone": backbone,
            "mode": mode,
            "precision": precision,
            "jit_compile": xla,
            "batch_size": b,
            "image_size": args.image_size,
            "device": "cpu" if args.cpu else "gpu",
            "data": None if inputs is None else args.data,
        }
        t0 = time.perf_counter()
        synthetic_ips = _time_steps(model, iter(synthetic), args.warmup, args.steps, b)
        base["synthetic_images_per_second"] = round(synthetic_ips, 1)
        base["synthetic_seconds"] = round(time.perf_counter() - t0, 1)
        if inputs is None:
            return [base | {"ingest": None, "how": HOW["synthetic"]}]
        lines = []
        for ingest in args.ingest:
            line = base | {"ingest": ingest, "how": HOW[ingest]}
            t0 = time.perf_counter()
            try:
                real_ips = _measure_real(model, ingest, inputs, args)
            except Exception as exc:  # noqa: BLE001 - reported on the line; the other paths still run
                traceback.print_exc()
                line["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            else:
                line["real_images_per_second"] = round(real_ips, 1)
                line["real_over_synthetic"] = round(real_ips / synthetic_ips, 3)
            line["seconds"] = round(time.perf_counter() - t0, 1)
            lines.append(line)
        return lines
    finally:
        set_precision_policy("float32")


def _ensure_tfrecord(workdir: str, num_images: int, image_size: int, seed: int = 0) -> str:
    """The TFRecord data set in `workdir` (bench.data's folder), written unless it already matches."""
    from bench.data import dataset_dir
    from job.data import shards
    from job.data.splits import write_synthetic
    from job.data.synthetic import SceneSpec

    root = dataset_dir(workdir, "tfrecord")
    try:
        synth = shards.load_manifest(root).source.get("synthetic", {})
    except Exception:  # noqa: BLE001 - missing or unreadable: write it anew
        synth = {}
    if (synth.get("num_images"), synth.get("image_size"), synth.get("seed")) != (num_images, image_size, seed):
        write_synthetic(
            root,
            SceneSpec(image_size=image_size),
            num_images=num_images,
            seed=seed,
            fmt="tfrecord",
            num_shards=4,
            progress=False,
            overwrite=True,
        )
    return root


def _exit_on_sigterm() -> None:
    """A timeout's SIGTERM unwinds through main's finally (S3 child, Ray), not past it; exit status 143."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _comma_list(choices):
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(choices)}; got {text!r}")
        return items

    return parse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/bench-gpu", help="Where the shards are written (not the repo).")
    p.add_argument("--backbones", default="resnet50,xception")
    p.add_argument("--modes", type=_comma_list(tuple(MODES)), default=list(MODES))
    p.add_argument("--ingest", type=_comma_list(INGESTS), default=list(INGESTS), help="Ingest paths to time.")
    p.add_argument(
        "--data", choices=("s3", "local"), default="s3", help="Read the shards from the embedded S3 or the workdir."
    )
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument(
        "--num-images",
        type=int,
        default=4096,
        help="Synthetic images written for the real pipelines (70%% train: ~11 batches of 256 per epoch).",
    )
    p.add_argument("--quick", action="store_true", help="Smoke run: batch 2, 1 step, 96 px, 64 images.")
    p.add_argument("--cpu", action="store_true", help="Run on the CPU (smoke test on a machine without a GPU).")
    p.add_argument("--no-real", action="store_true", help="Synthetic data only.")
    p.add_argument("--result", default=None, help="Also write all lines as a JSON list here.")
    args = p.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.image_size, args.num_images = 2, 1, 1, 96, 64
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    _exit_on_sigterm()
    common.quiet_logs()

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not args.cpu:
        if not gpus:
            sys.exit("No GPU is visible to TensorFlow; run with --cpu for a smoke test.")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)

    machine = common.machine_info()["gpu"] or "cpu"
    lines: list[dict] = []
    failed = False
    s3 = None
    ray_up = False
    try:
        inputs = None
        if not args.no_real:
            from job import storage
            from job.data import shards

            os.makedirs(args.workdir, exist_ok=True)
            data_uri = _ensure_tfrecord(args.workdir, args.num_images, args.image_size)
            if args.data == "s3":
                s3 = common.SeparateS3(BUCKET)
                local_dir, data_uri = data_uri, f"s3://{BUCKET}/datasets/tfrecord"
                storage.upload_dir(local_dir, data_uri)
            manifest = shards.load_manifest(data_uri)
            if len(manifest.class_names) != NUM_CLASSES:
                sys.exit(
                    f"{data_uri} has {len(manifest.class_names)} classes; this benchmark's model has {NUM_CLASSES}."
                )
            ray_train = None
            if "ray_data" in args.ingest:
                import ray

                from job.cluster.datasets import ray_dataset
                from job.cluster.runtime import quiet_ray_data

                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
                ray_up = True
                _exit_on_sigterm()  # ray.init put its own handler in (exit status 15)
                quiet_ray_data()
                ray_train = ray_dataset(data_uri, manifest, "train")
            inputs = Inputs(data_uri, manifest, ray_train)
        for backbone in args.backbones.split(","):
            for mode in args.modes:
                for line in run_config(backbone, mode, args, inputs):
                    line = {"machine": machine} | line
                    failed = failed or "error" in line
                    print(json.dumps(line), flush=True)
                    lines.append(line)
                    if args.result:
                        with open(args.result, "w") as fh:
                            json.dump(lines, fh, indent=2)
    finally:
        if ray_up:
            import ray

            ray.shutdown()
        if s3 is not None:
            s3.stop()
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
