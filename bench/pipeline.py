"""Input-pipeline throughput in one plain process, every figure a ratio of interleaved windows.

Measures (each a window of batches, taken round-robin, `--repeats` rounds):
- decode_ceiling: the chain's per-image work on encoded images held in memory: pixel-limit
  check, decode, resize, the default augmentation, batch (`make_pipeline` with no shuffle).
  No shard reading: the most this machine can prepare per second with this config.
- decode_only: the same images, decode + resize alone (`pipeline.decode_image`).
- local_tfrecord / local_parquet: the product's own path from local shard files,
  `pipeline.ShardFiles(...).train()` + `make_pipeline(training=True, repeat=True)`, exactly as
  `train --local` and a Ray worker on the direct ingest path build it.
- s3_tfrecord / s3_parquet: the same, with the shards on the embedded S3 server running in a
  process of its own, as a remote S3 would be (on this machine it still shares the cores).
- jpeg512_full / jpeg512_dct: 512-px JPEGs decoded for 224 px, in full then resized, vs with
  libjpeg's DCT-domain downscaling (`pipeline.decode_jpeg_at_least`) then resized.

Every ratio is the median of per-window-pair ratios (A's window i over B's window i, taken
back to back), with its spread (`common.pair_ratio`): load from other processes moves both
windows of a pair alike. This process's peak RSS is reported as the local pipeline's.

    python -m bench.pipeline --workdir /tmp/bench --result out.json
"""

from __future__ import annotations

import dataclasses
import io

from bench import common

BUCKET = "bench-pipeline"
# (numerator, denominator) of every reported ratio.
PAIRS = {
    "local_over_decode": ("local_tfrecord", "decode_ceiling"),
    "local_over_decode_only": ("local_tfrecord", "decode_only"),
    "s3_over_local": ("s3_tfrecord", "local_tfrecord"),
    "s3_parquet_over_local_parquet": ("s3_parquet", "local_parquet"),
    "parquet_over_tfrecord": ("local_parquet", "local_tfrecord"),
    "jpeg512_dct_over_full": ("jpeg512_dct", "jpeg512_full"),
}


def upscaled_jpegs(images: list[bytes], size: int = 512, count: int = 128) -> list[bytes]:
    """`count` of the data set's images re-encoded as size x size JPEGs (quality 90)."""
    from PIL import Image

    out = []
    for blob in images[:count]:
        picture = Image.open(io.BytesIO(blob)).convert("RGB").resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        picture.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def main() -> None:
    args = common.pipeline_args()
    common.quiet_logs()
    server = common.SeparateS3(BUCKET)
    try:
        result = measure(args)
    finally:
        server.stop()
    common.write_result(args.result, result)


def measure(args) -> dict:
    import numpy as np
    import tensorflow as tf

    from bench.data import FORMATS, dataset_dir
    from job import storage
    from job.config import DataConfig
    from job.data import pipeline, shards

    cfg = DataConfig(image_size=args.image_size, batch_size_per_worker=args.batch_size)
    parallel = cfg.parallel_calls or tf.data.AUTOTUNE
    b = args.batch_size

    tfr_root = dataset_dir(args.workdir, "tfrecord")
    manifest = shards.load_manifest(tfr_root)
    pairs = [(e.image, e.labels.astype(np.float32)) for _, e in shards.read_split(tfr_root, manifest, "train")]
    images = np.array([p[0] for p in pairs], dtype=object)
    labels = np.stack([p[1] for p in pairs])
    in_memory = tf.data.Dataset.from_tensor_slices((images, labels)).repeat()
    ceiling = pipeline.make_pipeline(
        in_memory, dataclasses.replace(cfg, shuffle_buffer_examples=0), training=True, batch_size=b, seed=0
    )
    decode_only = (
        tf.data.Dataset.from_tensor_slices(images)
        .repeat()
        .map(lambda x: pipeline.decode_image(x, cfg.image_size), num_parallel_calls=parallel, deterministic=False)
        .batch(b)
    )
    big = tf.data.Dataset.from_tensor_slices(np.array(upscaled_jpegs(list(images)), dtype=object)).repeat()

    def full_decode(x):
        return pipeline.resize_to(tf.io.decode_jpeg(x, channels=3), cfg.image_size)

    jpeg512_full = big.map(full_decode, num_parallel_calls=parallel, deterministic=False).batch(b)
    jpeg512_dct = big.map(
        lambda x: pipeline.decode_image(x, cfg.image_size), num_parallel_calls=parallel, deterministic=False
    ).batch(b)

    def product(root: str):
        files = pipeline.ShardFiles(root, shards.load_manifest(root), seed=0)
        return pipeline.make_pipeline(
            files.train(), cfg, training=True, batch_size=b, seed=0, repeat=True, drop_remainder=True
        )

    sources = {}
    for fmt in FORMATS:
        sources[f"local_{fmt}"] = dataset_dir(args.workdir, fmt)
        sources[f"s3_{fmt}"] = f"s3://{BUCKET}/datasets/{fmt}"
        storage.upload_dir(sources[f"local_{fmt}"], sources[f"s3_{fmt}"])
    iterators = {"decode_ceiling": iter(ceiling), "decode_only": iter(decode_only)}
    for name in ("local_tfrecord", "s3_tfrecord", "local_parquet", "s3_parquet"):
        iterators[name] = iter(product(sources[name]))
    iterators |= {"jpeg512_full": iter(jpeg512_full), "jpeg512_dct": iter(jpeg512_dct)}

    measures = {
        name: (lambda it=it: common.time_batches(it, args.warmup_batches, args.batches, b))
        for name, it in iterators.items()
    }
    # One untimed pass first: builds the graphs and lets AUTOTUNE settle.
    for it in iterators.values():
        common.time_batches(it, args.warmup_batches, args.batches // 2, b)
    runs = common.interleaved(measures, args.repeats)
    return {
        "images_per_second": {name: common.median(v) for name, v in runs.items()},
        "runs": {name: [round(x, 1) for x in v] for name, v in runs.items()},
        "ratios": {key: common.pair_ratio(runs[a], runs[b_]) for key, (a, b_) in PAIRS.items()},
        "settings": {
            "batch_size": b,
            "batches_per_window": args.batches,
            "warmup_batches": args.warmup_batches,
            "repeats": args.repeats,
            "train_images": len(images),
            "parallel_calls": cfg.parallel_calls or "AUTOTUNE",
            "shuffle_buffer_examples": cfg.shuffle_buffer_examples,
            "augment": cfg.augment,
            "s3": "embedded S3 server in a child process (bench.common.SeparateS3)",
        },
    }


if __name__ == "__main__":
    main()
