"""GPU training throughput: synthetic data vs the real input pipeline, per precision mode.

For ResNet50 and Xception at 224 px, batch 256 (weights none), it times training steps in
FP32, mixed precision, and mixed precision + XLA (through `job.training.model.build_model`,
`compile_model` and `set_precision_policy`), first on one synthetic batch held on the device
(the model's ceiling), then fed by the product's input pipeline from local TFRecord shards
(`examples_from_shards` + `make_pipeline(training=True)`). One JSON line per configuration:
images/s for both and real / synthetic. The whole run fits in about 8 minutes on one GPU.

    bash bench/gpu.sh                              # or: python -m bench.gpu --workdir /tmp/bench-gpu
    python -m bench.gpu --quick --cpu               # smoke run on a CPU: tiny batch, one step

Mixed precision is float16 on a GPU; with --cpu it is bfloat16 (float16 matmuls are not
implemented on CPUs). XLA on CPU compiles, slowly; --quick keeps it to one step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench import common

MODES = {
    "fp32": ("float32", False),
    "mixed": ("mixed_float16", False),
    "mixed_xla": ("mixed_float16", True),
}


def _time_steps(model, batches, warmup: int, steps: int, batch_size: int) -> float:
    """Images/s over `steps` training steps after `warmup` steps (results fetched to sync)."""
    it = iter(batches)
    step = model.make_train_function()
    for _ in range(warmup):
        logs = step(it)
    float(logs["loss"])  # wait for the device
    start = time.perf_counter()
    for _ in range(steps):
        logs = step(it)
    float(logs["loss"])
    return steps * batch_size / (time.perf_counter() - start)


def run_config(backbone: str, mode: str, args, data_root: str | None) -> dict:
    import tensorflow as tf
    import tf_keras

    from job.config import DataConfig
    from job.data import pipeline, shards
    from job.training.model import build_model, compile_model, set_precision_policy

    precision, xla = MODES[mode]
    if args.cpu and precision == "mixed_float16":
        precision = "mixed_bfloat16"
    tf_keras.backend.clear_session()
    set_precision_policy(precision)
    num_classes = 5
    model = build_model(backbone, num_classes, args.image_size, weights="none", precision=precision)
    compile_model(model, learning_rate=1e-3, jit_compile=xla)
    b = args.batch_size
    images = tf.random.uniform([b, args.image_size, args.image_size, 3], 0, 255, dtype=tf.float32)
    labels = tf.cast(tf.random.uniform([b, num_classes]) > 0.5, tf.float32)
    synthetic = tf.data.Dataset.from_tensors((images, labels)).repeat()
    if not args.cpu:
        synthetic = synthetic.apply(tf.data.experimental.prefetch_to_device("/GPU:0", 2))
    out = {
        "backbone": backbone,
        "mode": mode,
        "precision": precision,
        "jit_compile": xla,
        "batch_size": b,
        "image_size": args.image_size,
        "device": "cpu" if args.cpu else "gpu",
    }
    t0 = time.perf_counter()
    out["synthetic_images_per_second"] = round(_time_steps(model, synthetic, args.warmup, args.steps, b), 1)
    if data_root:
        manifest = shards.load_manifest(data_root)
        cfg = DataConfig(image_size=args.image_size, batch_size_per_worker=b)
        real = pipeline.make_pipeline(
            pipeline.examples_from_shards(data_root, manifest, "train", shuffle_shards=True),
            cfg,
            training=True,
            batch_size=b,
            repeat=True,
            drop_remainder=True,
        )
        out["real_images_per_second"] = round(_time_steps(model, real, args.warmup, args.steps, b), 1)
        out["real_over_synthetic"] = round(out["real_images_per_second"] / out["synthetic_images_per_second"], 3)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    set_precision_policy("float32")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/bench-gpu", help="Where the shards are written (not the repo).")
    p.add_argument("--backbones", default="resnet50,xception")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--num-images", type=int, default=2048, help="Synthetic images for the real-pipeline run.")
    p.add_argument("--quick", action="store_true", help="Smoke run: batch 2, 1 step, 96 px, 64 images.")
    p.add_argument("--cpu", action="store_true", help="Run on the CPU (smoke test on a machine without a GPU).")
    p.add_argument("--no-real", action="store_true", help="Synthetic data only.")
    p.add_argument("--result", default=None, help="Also write all lines as a JSON list here.")
    args = p.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.image_size, args.num_images = 2, 1, 1, 96, 64
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    common.quiet_logs()

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not args.cpu:
        if not gpus:
            sys.exit("No GPU is visible to TensorFlow; run with --cpu for a smoke test.")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)

    data_root = None
    if not args.no_real:
        from bench.data import ensure_datasets

        os.makedirs(args.workdir, exist_ok=True)
        data_root = ensure_datasets(args.workdir, args.num_images, args.image_size)["tfrecord"]
    lines = []
    for backbone in args.backbones.split(","):
        for mode in args.modes.split(","):
            line = {"machine": common.machine_info()["gpu"] or "cpu"} | run_config(backbone, mode, args, data_root)
            print(json.dumps(line), flush=True)
            lines.append(line)
    if args.result:
        with open(args.result, "w") as fh:
            json.dump(lines, fh, indent=2)


if __name__ == "__main__":
    main()
