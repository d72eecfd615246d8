"""Input-pipeline throughput in one plain process: decode ceiling, local TFRecord, local Parquet.

- decode ceiling: the train split's JPEG bytes held in memory -> `pipeline.decode_image` with
  the pipeline's parallelism -> batch. No shard reading, shuffling or augmentation: the most
  this machine can decode and resize.
- local TFRecord / Parquet: the product's own path, `pipeline.examples_from_shards` +
  `pipeline.make_pipeline(training=True, repeat=True)`, exactly as `train --local` builds it.

The three run round-robin (one window each, then again), so load from other processes
falls on all of them alike; each window starts after a warm-up that drains what the
pipeline buffered while it waited. This process's peak RSS is reported as the local
pipeline's.

    python -m bench.pipeline --workdir /tmp/bench --result out.json
"""

from __future__ import annotations

from bench import common


def main() -> None:
    args = common.pipeline_args()
    common.quiet_logs()

    import numpy as np
    import tensorflow as tf

    from bench.data import dataset_dir
    from job.config import DataConfig
    from job.data import pipeline, shards

    cfg = DataConfig(image_size=args.image_size, batch_size_per_worker=args.batch_size)
    parallel = cfg.parallel_calls or tf.data.AUTOTUNE

    # Decode ceiling: the same images, already in memory.
    tfr_root = dataset_dir(args.workdir, "tfrecord")
    manifest = shards.load_manifest(tfr_root)
    images = [e.image for _, e in shards.read_split(tfr_root, manifest, "train")]
    ceiling = (
        tf.data.Dataset.from_tensor_slices(np.array(images, dtype=object))
        .repeat()
        .map(lambda b: pipeline.decode_image(b, cfg.image_size), num_parallel_calls=parallel, deterministic=False)
        .batch(args.batch_size)
    )

    def product_pipeline(fmt: str):
        root = dataset_dir(args.workdir, fmt)
        m = shards.load_manifest(root)
        ex = pipeline.examples_from_shards(root, m, "train", shuffle_shards=True, seed=0)
        return pipeline.make_pipeline(
            ex, cfg, training=True, batch_size=args.batch_size, seed=0, repeat=True, drop_remainder=True
        )

    iterators = {
        "decode_ceiling": iter(ceiling),
        "local_tfrecord": iter(product_pipeline("tfrecord")),
        "local_parquet": iter(product_pipeline("parquet")),
    }
    measures = {
        name: (lambda it=it: common.time_batches(it, args.warmup_batches, args.batches, args.batch_size))
        for name, it in iterators.items()
    }
    # One untimed pass first: builds the graphs and lets AUTOTUNE settle.
    for it in iterators.values():
        common.time_batches(it, args.warmup_batches, args.batches // 2, args.batch_size)
    runs = common.interleaved(measures, args.repeats)
    common.write_result(
        args.result,
        {
            "images_per_second": {name: common.median(v) for name, v in runs.items()},
            "runs": {name: [round(x, 1) for x in v] for name, v in runs.items()},
            "settings": {
                "batch_size": args.batch_size,
                "batches_per_window": args.batches,
                "warmup_batches": args.warmup_batches,
                "repeats": args.repeats,
                "train_images": len(images),
                "parallel_calls": cfg.parallel_calls or "AUTOTUNE",
                "shuffle_buffer_examples": cfg.shuffle_buffer_examples,
                "augment": cfg.augment,
            },
        },
    )


if __name__ == "__main__":
    main()
