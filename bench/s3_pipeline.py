"""S3 input throughput of both ingest paths, the way a Ray Train worker sees it.

The embedded S3 server holds both shard sets. A local Ray (1 worker CPU + 1 CPU for Ray
Data, as `driver.connect` sizes it for `data.ingest: ray_data`) runs a 1-worker
`TensorflowTrainer` whose train function builds exactly what `worker.worker_entry` builds,
for each path and format, and times batches taken from it, with no model:
- ray_data_<fmt>: `datasets.ray_dataset` (Ray Data over pyarrow's S3 filesystem) ->
  `get_dataset_shard` -> `worker.ray_data_sources` (iter_batches -> ReleasableBatches ->
  examples_from_batches) -> `pipeline.make_pipeline(training=True, repeat=True)`;
- direct_<fmt>: `pipeline.ShardFiles(s3 uri, ...).train()` (this worker's part of the shard
  files, fetched from S3 with read-ahead) -> the same `make_pipeline`;
- local_<fmt>: `ShardFiles` over the local copy of the shards, in the same worker: the
  reference every S3 figure is divided by, window pair by window pair.
The direct windows are taken first, interleaved with the local ones, before any Ray Data
execution exists; then the Ray Data windows, interleaved with the local ones again.
A trainer (rather than a Ray task) is used because that is the only place training reads:
same worker process setup (Ray's CPU reservation, env vars, streaming split), same hand-over.

    python -m bench.s3_pipeline --workdir /tmp/bench --result out.json
"""

from __future__ import annotations

import json
import os
import time

from bench import common

BUCKET = "bench"


def measure_in_worker(config: dict) -> None:
    """The trainer's per-worker function: time each input pipeline, report the figures."""
    import ray.train

    from bench import common as c
    from bench.data import FORMATS
    from job.cluster import worker
    from job.config import DataConfig
    from job.data import pipeline, shards

    cfg = DataConfig(image_size=config["image_size"], batch_size_per_worker=config["batch_size"])
    w, n, b = config["warmup_batches"], config["batches"], config["batch_size"]

    def chain(examples):
        return iter(
            pipeline.make_pipeline(examples, cfg, training=True, batch_size=b, seed=0, repeat=True, drop_remainder=True)
        )

    def files(root: str):
        return chain(pipeline.ShardFiles(root, shards.load_manifest(root), seed=0).train())

    local = {fmt: files(config["local_roots"][fmt]) for fmt in FORMATS}
    releases = []

    def ray_data(fmt: str):
        # worker.ray_data_sources reads the "train" and "val" shards; here each format is a "train".
        shard = ray.train.get_dataset_shard(fmt)
        source = pipeline.ReleasableBatches(
            lambda: shard.iter_batches(batch_size=worker.HANDOVER_BATCH_ROWS, batch_format="numpy", prefetch_batches=2)
        )
        releases.append(source.release)
        return chain(pipeline.examples_from_batches(source, config["num_classes"]))

    def measure(iterators: dict) -> dict:
        for it in iterators.values():
            c.time_batches(it, w, n // 2, b)
        return c.interleaved(
            {k: (lambda it=it: c.time_batches(it, w, n, b)) for k, it in iterators.items()}, config["repeats"]
        )

    # Two phases, each path interleaved with the same worker's local read: direct first, before
    # any Ray Data execution exists (one goes on reading in the background between its own
    # windows and slows whatever window follows), then Ray Data.
    phases = {"direct": {}, "ray_data": {}}
    for fmt in FORMATS:
        phases["direct"] |= {f"direct_{fmt}": files(config["s3_roots"][fmt]), f"local_{fmt}": local[fmt]}
    direct = measure(phases["direct"])
    for fmt in FORMATS:
        phases["ray_data"] |= {f"ray_data_{fmt}": ray_data(fmt), f"local_{fmt}": local[fmt]}
    with_ray_data = measure(phases["ray_data"])
    runs = dict(direct) | {k: v for k, v in with_ray_data.items() if k.startswith("ray_data_")}
    runs |= {f"{k}_ray_data_phase": v for k, v in with_ray_data.items() if k.startswith("local_")}
    # Train V2 keeps metrics only with checkpoints; the worker shares this node, so a file will do.
    with open(config["out_path"], "w") as fh:
        json.dump({"runs": runs, "worker_peak_rss_bytes": c.peak_rss_bytes()}, fh)
    for release in releases:  # as train_worker does: the repeating iterators are dropped mid-pass
        release()
    ray.train.report({"done": 1})


def main() -> None:
    args = common.pipeline_args()
    common.quiet_logs()

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from bench.data import FORMATS, dataset_dir
    from job import storage
    from job.cluster import runtime, worker
    from job.cluster.datasets import ray_dataset
    from job.data import shards
    from job.storage.embedded import use_embedded_s3

    server = use_embedded_s3(BUCKET)
    try:
        start = time.perf_counter()
        uris = {}
        for fmt in FORMATS:
            uris[fmt] = f"s3://{BUCKET}/datasets/{fmt}"
            storage.upload_dir(dataset_dir(args.workdir, fmt), uris[fmt])
        upload_seconds = time.perf_counter() - start
        out_path = os.path.abspath(os.path.join(args.workdir, "s3-pipeline-worker.json"))
        if os.path.exists(out_path):
            os.remove(out_path)
        manifests = {fmt: shards.load_manifest(uri) for fmt, uri in uris.items()}
        # 1 worker CPU + 1 for Ray Data's read tasks: with none spare the read never runs.
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, logging_level="WARNING")
        runtime.quiet_ray_data()
        datasets = {fmt: ray_dataset(uris[fmt], manifests[fmt], "train") for fmt in FORMATS}
        trainer = TensorflowTrainer(
            train_loop_per_worker=measure_in_worker,
            train_loop_config={
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "num_classes": len(manifests["tfrecord"].class_names),
                "warmup_batches": args.warmup_batches,
                "batches": args.batches,
                "repeats": args.repeats,
                "local_roots": {fmt: os.path.abspath(dataset_dir(args.workdir, fmt)) for fmt in FORMATS},
                "s3_roots": uris,
                "out_path": out_path,
            },
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(
                name=f"s3-pipeline-{int(time.time())}",
                storage_path=os.path.abspath(os.path.join(args.workdir, "ray-results")),
            ),
            datasets=datasets,
        )
        fit_start = time.perf_counter()
        trainer.fit()
        fit_seconds = time.perf_counter() - fit_start
        with open(out_path) as fh:
            worker = json.load(fh)
        runs = worker["runs"]
        common.write_result(
            args.result,
            {
                "images_per_second": {k: common.median(v) for k, v in runs.items()},
                "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
                "ratios": {
                    **{
                        f"direct_{fmt}_over_local": common.pair_ratio(runs[f"direct_{fmt}"], runs[f"local_{fmt}"])
                        for fmt in FORMATS
                    },
                    **{
                        f"ray_data_{fmt}_over_local": common.pair_ratio(
                            runs[f"ray_data_{fmt}"], runs[f"local_{fmt}_ray_data_phase"]
                        )
                        for fmt in FORMATS
                    },
                },
                "worker_peak_rss_bytes": worker["worker_peak_rss_bytes"],
                "upload_seconds": round(upload_seconds, 2),
                "trainer_fit_seconds": round(fit_seconds, 1),
                "how": "1-worker TensorflowTrainer; ray_data: get_dataset_shard -> iter_batches -> "
                "examples_from_batches, direct: ShardFiles over s3://; both -> make_pipeline(training=True); "
                "ray.init(num_cpus=2): 1 worker CPU + 1 for Ray Data",
            },
        )
    finally:
        ray.shutdown()
        server.stop()


if __name__ == "__main__":
    main()
