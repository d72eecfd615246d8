"""Checkpoint cost as a share of epoch time, for the demo model and a larger backbone.

For each model: build and compile it with `job.training.model`, time training steps on the real
local TFRecord pipeline (`examples_from_shards` + `make_pipeline(training=True)`), and take
epoch time = steps per epoch (train split / batch, as the plan computes it) x the median
step time after warm-up. Then save a checkpoint the way a run does, repeatedly:
`tf.train.Checkpoint(model, optimizer).write` + state.json + `checkpoints.write_manifest`
(sha256 of every file) + `checkpoints.publish` to the embedded S3 server, and take the
median. (On Ray the upload is Ray Train's own copy to storage_path; `publish` is the
single-process path and uploads the same bytes.)

Asynchronous saves (`checkpoint.upload: async`, the default on Ray): training waits only for
the local write; the manifest and the upload run on a background thread while training goes
on, and slow its steps down (on 2 cores they share the CPUs). So the blocking time of an async
save is measured as the local write plus the extra step time while the background work runs:
training steps are timed one by one until the thread is done, and their excess over the
median step without an upload is added.

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
        local = write_local(ckpt, i + 1, "bench-ckpt-")
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
    async_parts = measure_async(model, ds, ckpt, name, saves)
    async_blocking = common.median([p["blocking"] for p in async_parts[1:] or async_parts])
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
        "async_saves": [{k: round(v, 3) for k, v in p.items()} for p in async_parts],
        "median_async_blocking_seconds": round(async_blocking, 3),
        "async_share_of_epoch": async_blocking / epoch,
    }


def write_local(ckpt, epoch: int, prefix: str) -> str:
    """What a run's save writes locally: weights + optimizer, and state.json."""
    from job.training import checkpoints

    local = tempfile.mkdtemp(prefix=prefix)
    ckpt.write(os.path.join(local, checkpoints.WEIGHTS_PREFIX))
    with open(os.path.join(local, checkpoints.STATE), "w") as fh:
        json.dump({"epoch": epoch, "val_loss": 0.5, "history": []}, fh)
    return local


def measure_async(model, ds, ckpt, name: str, saves: int) -> list[dict]:
    """Per save: local write (blocking), then training steps while the manifest and upload run
    on a thread; `blocking` = write + the steps' excess over the undisturbed median step."""
    import threading

    from job.storage.run_store import checkpoint_dir_name
    from job.training import checkpoints

    iterator = iter(ds)
    train_step = model.make_train_function()

    def timed_step() -> float:
        start = time.perf_counter()
        train_step(iterator)
        return time.perf_counter() - start

    for _ in range(2):  # warm the step function outside fit
        timed_step()
    undisturbed = common.median([timed_step() for _ in range(5)])
    parts = []
    for i in range(saves):
        start = time.perf_counter()
        local = write_local(ckpt, i + 1, "bench-ckpt-async-")
        write = time.perf_counter() - start

        def upload(folder=local, index=i):
            checkpoints.write_manifest(folder)
            checkpoints.publish(folder, f"s3://bench/ckpt-async/{name}/{checkpoint_dir_name(index + 1)}")

        thread = threading.Thread(target=upload)
        background_start = time.perf_counter()
        thread.start()
        steps = []
        while thread.is_alive():
            steps.append(timed_step())
        thread.join()
        background = time.perf_counter() - background_start
        shutil.rmtree(local, ignore_errors=True)
        slowdown = max(0.0, sum(steps) - len(steps) * undisturbed)
        parts.append(
            {
                "write": write,
                "background": background,
                "steps_during": len(steps),
                "step_slowdown": slowdown,
                "blocking": write + slowdown,
                "undisturbed_step": undisturbed,
            }
        )
    return parts


def _in_process_s3():
    from job.storage.embedded import use_embedded_s3

    return use_embedded_s3("bench")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--saves", type=int, default=4, help="The first save is warm-up.")
    p.add_argument("--result", required=True)
    p.add_argument(
        "--separate-s3",
        action="store_true",
        help="Run the embedded S3 server in a process of its own, as a remote S3 would be: its "
        "request handling then does not share this process's interpreter lock with training.",
    )
    args = p.parse_args()
    common.quiet_logs()

    server = common.SeparateS3() if args.separate_s3 else _in_process_s3()
    try:
        out = {
            name: measure(name, args.workdir, args.batch_size, args.warmup_steps, args.steps, args.saves)
            for name in args.models.split(",")
        }
    finally:
        server.stop()
    worst = max(out, key=lambda n: out[n]["share_of_epoch"])
    worst_async = max(out, key=lambda n: out[n]["async_share_of_epoch"])
    common.write_result(
        args.result,
        {
            "models": out,
            "worst": worst,
            "checkpoint_over_epoch": out[worst]["share_of_epoch"],
            "worst_async": worst_async,
            "checkpoint_async_over_epoch": out[worst_async]["async_share_of_epoch"],
        },
    )


if __name__ == "__main__":
    main()
