"""Checkpoint cost as a share of epoch time, for the demo model and a larger backbone.

For each model: build and compile it with `job.training.model`, time training steps on the real
local TFRecord pipeline (`examples_from_shards` + `make_pipeline(training=True)`), and take
epoch time = steps per epoch (train split / batch, as the plan computes it) x the median
step time after warm-up. Then save a checkpoint the way a run does, repeatedly:
`tf.train.Checkpoint(model, optimizer).write` + state.json + `checkpoints.write_manifest`
(sha256 of every file) + `checkpoints.publish` to the embedded S3 server, and take the
median. (On Ray the upload is Ray Train's own copy to storage_path; `publish` is the
single-process path and uploads the same bytes.)

    python -m bench.checkpoint --workdir /tmp/bench --result out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from bench import common

MODELS = {
    # name: (backbone, image size, width)
    "small_cnn_224": ("small_cnn", 224, 16),
    "resnet50_128": ("resnet50", 128, 32),
}


def measure(name: str, workdir: str, batch_size: int, warmup_steps: int, steps: int, saves: int) -> dict:
    import tensorflow as tf
    import tf_keras

    from bench.data import dataset_dir
    from job.config import DataConfig
    from job.data import pipeline, shards
    from job.storage.run_store import checkpoint_dir_name
    from job.training import checkpoints
    from job.training.model import build_model, compile_model

    backbone, size, width = MODELS[name]
    root = dataset_dir(workdir, "tfrecord")
    manifest = shards.load_manifest(root)
    cfg = DataConfig(image_size=size, batch_size_per_worker=batch_size)
    ds = pipeline.make_pipeline(
        pipeline.examples_from_shards(root, manifest, "train", shuffle_shards=True),
        cfg,
        training=True,
        batch_size=batch_size,
        repeat=True,
        drop_remainder=True,
    )
    model = build_model(backbone, len(manifest.class_names), size, width=width)
    compile_model(model, learning_rate=1e-3)

    class StepTimer(tf_keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self._t = [], 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._t)

    timer = StepTimer()
    model.fit(ds, epochs=1, steps_per_epoch=warmup_steps + steps, callbacks=[timer], verbose=0)
    step = common.median(timer.times[warmup_steps:])
    steps_per_epoch = manifest.num_examples("train") // batch_size
    epoch = step * steps_per_epoch

    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    save_times, parts, sizes = [], [], 0
    for i in range(saves):
        start = time.perf_counter()
        local = tempfile.mkdtemp(prefix="bench-ckpt-")
        ckpt.write(os.path.join(local, checkpoints.WEIGHTS_PREFIX))
        with open(os.path.join(local, checkpoints.STATE), "w") as fh:
            json.dump({"epoch": i + 1, "val_loss": 0.5, "history": []}, fh)
        written = time.perf_counter()
        checkpoints.write_manifest(local)
        hashed = time.perf_counter()
        checkpoints.publish(local, f"s3://bench/ckpt/{name}/{checkpoint_dir_name(i + 1)}")
        end = time.perf_counter()
        save_times.append(end - start)
        parts.append({"write": written - start, "sha256_manifest": hashed - written, "upload": end - hashed})
        sizes = sum(os.path.getsize(os.path.join(local, f)) for f in os.listdir(local))
        shutil.rmtree(local, ignore_errors=True)
    save = common.median(save_times[1:] if saves > 1 else save_times)
    return {
        "image_size": size,
        "params": int(model.count_params()),
        "checkpoint_bytes": sizes,
        "step_seconds": [round(t, 3) for t in timer.times[warmup_steps:]],
        "median_step_seconds": round(step, 3),
        "steps_per_epoch": steps_per_epoch,
        "epoch_seconds": round(epoch, 2),
        "save_seconds": [round(t, 3) for t in save_times],
        "median_save_parts_seconds": {k: round(common.median([p[k] for p in parts[1:] or parts]), 3) for k in parts[0]},
        "median_save_seconds": round(save, 3),
        "share_of_epoch": save / epoch,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--saves", type=int, default=4, help="The first save is warm-up.")
    p.add_argument("--result", required=True)
    args = p.parse_args()
    common.quiet_logs()

    from job.storage.embedded import use_embedded_s3

    server = use_embedded_s3("bench")
    try:
        out = {
            name: measure(name, args.workdir, args.batch_size, args.warmup_steps, args.steps, args.saves)
            for name in args.models.split(",")
        }
    finally:
        server.stop()
    worst = max(out, key=lambda n: out[n]["share_of_epoch"])
    common.write_result(
        args.result, {"models": out, "worst": worst, "checkpoint_over_epoch": out[worst]["share_of_epoch"]}
    )


if __name__ == "__main__":
    main()
