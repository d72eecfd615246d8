"""The CPU benchmark suite: one command, `make bench` (= `python -m bench.run`).

    python -m bench.run [--workdir /tmp/multilabel-bench] [--out bench/results.json] [--quick]
                        [--sections data,pipeline,s3,trainer,scaling,checkpoint,inference]

Every section runs in its own subprocess with a hard timeout (see bench/common.py) on the
same generated shards (224 px synthetic scenes, TFRecord and Parquet, in --workdir, never
in the repository). Figures are medians over repeated, warmed-up windows. Writes
bench/results.json (the contract in docs/performance.md, plus details under "detail") and
bench/results.md (each ratio with its target and whether it is met).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

from bench import common

SECTIONS = ("data", "pipeline", "s3", "trainer", "scaling", "checkpoint", "inference")

# ratio key: (description, test, target text)
TARGETS = {
    "local_over_decode": (
        "local TFRecord pipeline / decode ceiling (the same per-image work on images held in memory)",
        lambda r: r >= 0.85,
        ">= 0.85",
    ),
    "s3_over_local": (
        "S3 / local, TFRecord, default ingest (direct) in a Ray Train worker",
        lambda r: r >= 0.9,
        ">= 0.9",
    ),
    "s3_parquet_over_local": (
        "S3 / local, Parquet, default ingest (direct) in a Ray Train worker",
        lambda r: r >= 0.9,
        ">= 0.9",
    ),
    "parquet_over_tfrecord": ("Parquet / TFRecord (local)", lambda r: 0.8 <= r <= 1.25, "0.8 - 1.25"),
    "trainer_over_fit": (
        "TensorflowTrainer (1 worker) / plain fit, epoch time incl. its checkpoint",
        lambda r: r <= 1.05,
        "<= 1.05",
    ),
    "checkpoint_over_epoch": ("checkpoint save + upload / epoch time (worse model)", lambda r: r <= 0.05, "<= 0.05"),
    "checkpoint_async_over_epoch": (
        "async checkpoint: blocking time (local write + step slowdown while uploading) / epoch time (worse model)",
        lambda r: r <= 0.02,
        "<= 0.02",
    ),
}


# The one-sided targets' bounds: a ratio's spread across pairs must be smaller than its gap to this.
BOUNDS = {
    "local_over_decode": 0.85,
    "s3_over_local": 0.9,
    "s3_parquet_over_local": 0.9,
    "trainer_over_fit": 1.05,
}


def verdict(key: str, value: float | None, spread: dict | None) -> str:
    """ "met" or "missed", and for an interleaved one-sided ratio whether its spread is below its gap to the target."""
    if value is None:
        return "n/a"
    text = "met" if TARGETS[key][1](value) else "missed"
    if spread and spread.get("spread") is not None and key in BOUNDS:
        gap = abs(value - BOUNDS[key])
        text += f"; spread {'<' if spread['spread'] < gap else '>='} gap {gap:.3f}"
    return text


def sizes(quick: bool) -> dict:
    if quick:
        return {
            "num_images": 300,
            "pipeline": ["--batches", "6", "--warmup-batches", "2", "--repeats", "3"],
            "s3": ["--batches", "6", "--warmup-batches", "2", "--repeats", "3"],
            "trainer_epochs": "3",
            "trainer_rounds": "1",
            "scaling_epochs": "2",
            "checkpoint": ["--steps", "3", "--warmup-steps", "1", "--saves", "3"],
            "inference": ["--num-images", "200", "--rounds", "1"],
        }
    return {
        "num_images": 1000,
        # Windows of about a second each: long enough that one window's noise is not the figure.
        "pipeline": ["--repeats", "9", "--batches", "60", "--warmup-batches", "6"],
        "s3": ["--repeats", "9", "--batches", "60", "--warmup-batches", "6"],
        "trainer_epochs": "4",
        "trainer_rounds": "3",
        "scaling_epochs": "3",
        "checkpoint": [],
        "inference": ["--num-images", "2000", "--rounds", "3"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/multilabel-bench", help="Shards and scratch files (not the repo).")
    p.add_argument(
        "--out",
        default=os.path.join(common.BENCH_DIR, "results.json"),
        help="results.json path; results.md is written beside it.",
    )
    p.add_argument(
        "--quick", action="store_true", help="Smoke run: few images, short windows (figures not meaningful)."
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"Comma list of {', '.join(SECTIONS)}.")
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    os.makedirs(args.workdir, exist_ok=True)
    size = sizes(args.quick)
    started = time.perf_counter()
    detail: dict = {"load_average_start": common.load_average(), "errors": {}}
    print(f"bench: workdir {args.workdir}, load average {detail['load_average_start']}", flush=True)

    def section(name: str, module: str, extra: list[str], timeout: float) -> dict | None:
        if name not in chosen:
            return None
        print(f"bench: {name} ...", flush=True)
        try:
            res = common.run_section(
                module,
                ["--workdir", args.workdir, *extra],
                os.path.join(args.workdir, f"{name}.json"),
                timeout,
                os.path.join(args.workdir, f"{name}.log"),
            )
        except common.SectionFailed as exc:
            print(f"bench: {name} FAILED: {exc}", flush=True)
            detail["errors"][name] = str(exc)[:2000]
            return None
        print(f"bench: {name} done in {res['section_wall_seconds']} s", flush=True)
        detail[name] = res
        return res

    # Shards first (every other section reads them); cached between runs.
    if "data" in chosen or not os.path.exists(os.path.join(args.workdir, "data-parquet", "dataset.json")):
        start = time.perf_counter()
        from bench.data import ensure_datasets

        ensure_datasets(args.workdir, size["num_images"], args.image_size)
        detail["data"] = {"num_images": size["num_images"], "seconds": round(time.perf_counter() - start, 1)}
    isz = ["--image-size", str(args.image_size)]
    pipe = section("pipeline", "pipeline", isz + size["pipeline"], 420)
    s3 = section("s3", "s3_pipeline", isz + size["s3"], 480)
    trainer = section(
        "trainer",
        "trainer",
        isz + ["--runs", "plain,ray1", "--rounds", size["trainer_rounds"], "--epochs", size["trainer_epochs"]],
        900,
    )
    scaling = section("scaling", "trainer", isz + ["--runs", "ray2", "--epochs", size["scaling_epochs"]], 420)
    ckpt = section("checkpoint", "checkpoint", size["checkpoint"], 420)
    inference = section("inference", "inference", isz + size["inference"], 1200)

    ips, spread = {}, {}
    if pipe:
        ips.update({k: pipe["images_per_second"][k] for k in ("decode_ceiling", "local_tfrecord", "local_parquet")})
        spread.update({k: pipe["ratios"][k] for k in ("local_over_decode", "parquet_over_tfrecord")})
    if s3:
        # The default ingest path (direct) as a Ray Train worker sees it, over the same worker's local read.
        ips.update({f"s3_{fmt}": s3["images_per_second"][f"direct_{fmt}"] for fmt in ("tfrecord", "parquet")})
        spread["s3_over_local"] = s3["ratios"]["direct_tfrecord_over_local"]
        spread["s3_parquet_over_local"] = s3["ratios"]["direct_parquet_over_local"]
    if trainer:
        spread["trainer_over_fit"] = trainer["ratios"]["ray1_over_plain"]
    ratios = {
        key: spread[key]["median"] if key in spread else None
        for key in (
            "local_over_decode",
            "s3_over_local",
            "s3_parquet_over_local",
            "parquet_over_tfrecord",
            "trainer_over_fit",
        )
    }
    ratios["checkpoint_over_epoch"] = ckpt["checkpoint_over_epoch"] if ckpt else None
    ratios["checkpoint_async_over_epoch"] = ckpt["checkpoint_async_over_epoch"] if ckpt else None
    extra_ratios = {}
    if pipe:
        extra_ratios.update(
            {
                k: pipe["ratios"][k]
                for k in (
                    "local_over_decode_only",
                    "jpeg512_dct_over_full",
                    "s3_over_local",
                    "s3_parquet_over_local_parquet",
                )
            }
        )
        detail["decode"] = {
            k: round(pipe["images_per_second"][k], 1) for k in ("decode_only", "jpeg512_full", "jpeg512_dct")
        }
    if s3:
        extra_ratios.update({f"worker_{k}": v for k, v in s3["ratios"].items()})
    if trainer:
        runs = trainer["runs"]
        extra_ratios["trainer_over_fit_wall"] = _div(runs["ray1"]["wall_seconds"], runs["plain"]["wall_seconds"])
    if scaling and trainer:
        one, two = trainer["runs"]["ray1"], scaling["runs"]["ray2"]
        tput = {n: r["train_images_per_epoch"] / r["median_epoch_seconds"] for n, r in (("1", one), ("2", two))}
        detail["scaling_check"] = {
            "what": "collective-overhead check on 2 shared cores, not a scaling claim",
            "images_per_second_1_worker": round(tput["1"], 1),
            "images_per_second_2_workers": round(tput["2"], 1),
            "two_over_one": round(tput["2"] / tput["1"], 3),
        }
    detail["extra_ratios"] = extra_ratios
    detail["load_average_end"] = common.load_average()
    detail["wall_seconds"] = round(time.perf_counter() - started, 1)
    detail["command"] = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    detail["quick"] = args.quick
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": common.machine_info(),
        "image_size": args.image_size,
        "images_per_second": {
            k: _round(ips.get(k))
            for k in ("decode_ceiling", "local_tfrecord", "local_parquet", "s3_tfrecord", "s3_parquet")
        },
        "ratios": {k: _round(v, 3) for k, v in ratios.items()},
        # Each interleaved ratio's per-pair figures: median, spread (IQR), min, max, pairs.
        "ratio_spread": spread,
        "peak_rss_bytes": pipe["peak_rss_bytes"] if pipe else None,
        "inference": inference_summary(inference) if inference else None,
        "detail": _compact(detail),
    }
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
        fh.write("\n")
    md = os.path.join(os.path.dirname(os.path.abspath(args.out)), "results.md")
    with open(md, "w") as fh:
        fh.write(render_markdown(results))
    print(render_markdown(results))
    print(f"bench: wrote {args.out} and {md} in {detail['wall_seconds']} s", flush=True)
    return 1 if detail["errors"] else 0


def inference_summary(section: dict) -> dict:
    """Batch inference: images/s, wall and peak memory per command, ratios to the single process."""
    return {
        "num_images": section["num_images"],
        "model": section["model"],
        "images_per_second": {name: r["images_per_second"] for name, r in section["runs"].items()},
        "wall_seconds": {name: r["wall_seconds"] for name, r in section["runs"].items()},
        "steady_images_per_second": {name: r.get("steady_images_per_second") for name, r in section["runs"].items()},
        "peak_memory_mib": {name: round(r["peak_pss_bytes"] / 2**20) for name, r in section["runs"].items()},
        "ratios": section["ratios"],
    }


def _div(a, b):
    return a / b if a and b else None


def _round(v, digits: int = 1):
    return round(v, digits) if isinstance(v, (int, float)) else None


def _compact(detail: dict) -> dict:
    """Keep results.json small: drop bulky or redundant keys from the section outputs."""
    out = dict(detail)
    for name in ("pipeline", "s3"):
        if name in out:
            out[name] = {k: v for k, v in out[name].items() if k != "images_per_second"}
    if "inference" in out:
        # The medians and per-round ratios are in results["inference"]; keep each round's wall time.
        section = out["inference"]
        out["inference"] = {k: v for k, v in section.items() if k not in ("runs", "ratios")}
        out["inference"]["round_wall_seconds"] = {
            name: [r["wall_seconds"] for r in run["rounds"]] for name, run in section.get("runs", {}).items()
        }
    return out


def render_markdown(results: dict) -> str:
    d = results["detail"]
    m = results["machine"]
    lines = [
        f"# Benchmark results ({results['date']})",
        "",
        f"Machine: {m['cores']} cores, {m['cpu']}, GPU: {m['gpu'] or 'none'}. Image size {results['image_size']} px. "
        f"Load average (1/5/15 min) at start {d['load_average_start']}, at end {d['load_average_end']}. "
        f"Command: `{d['command'].strip()}` ({d['wall_seconds']} s).",
        "",
        "Interleaved ratios are the median of per-pair ratios (A's window over B's window taken back to back); "
        "spread is their interquartile range, then min - max and the number of pairs.",
        "",
        "| ratio | measured | spread (IQR; min - max; pairs) | target | |",
        "|---|---|---|---|---|",
    ]
    for key, (desc, _ok, target) in TARGETS.items():
        v = results["ratios"].get(key)
        sp = results.get("ratio_spread", {}).get(key)
        spread = f"{sp['spread']:.3f}; {sp['min']:.3f} - {sp['max']:.3f}; {len(sp['pairs'])}" if sp else "-"
        shown = "-" if v is None else f"{v:.3f}"
        lines.append(f"| `{key}`: {desc} | {shown} | {spread} | {target} | {verdict(key, v, sp)} |")
    lines += ["", "| images/s (median) | |", "|---|---|"]
    lines += [f"| {k} | {'-' if v is None else v} |" for k, v in results["images_per_second"].items()]
    sc = d.get("scaling_check")
    if sc:
        lines += [
            "",
            f"Scaling check ({sc['what']}): 1 worker {sc['images_per_second_1_worker']} img/s, "
            f"2 workers {sc['images_per_second_2_workers']} img/s (x{sc['two_over_one']}).",
        ]
    if results.get("peak_rss_bytes"):
        lines += ["", f"Peak RSS of the local-pipeline process: {results['peak_rss_bytes'] / 2**20:.0f} MiB."]
    inf = results.get("inference")
    if inf:
        lines += [
            "",
            f"Batch inference, {inf['num_images']} images, {inf['model']}; whole commands, median of rounds:",
            "",
            "| command | images/s | wall s | peak memory MiB | / single (IQR; min - max) "
            "| steady images/s | steady / single |",
            "|---|---|---|---|---|---|---|",
        ]

        def ratio(key: str) -> str:
            r = inf["ratios"].get(key)
            return f"{r['median']:.3f} ({r['spread']:.3f}; {r['min']:.3f} - {r['max']:.3f})" if r else "1"

        for name in inf["images_per_second"]:
            steady = inf.get("steady_images_per_second", {}).get(name) or "-"
            lines.append(
                f"| {name} | {inf['images_per_second'][name]} | {inf['wall_seconds'][name]} | "
                f"{inf['peak_memory_mib'][name]} | {ratio(name + '_over_single')} | {steady} | "
                f"{ratio(name + '_steady_over_single')} |"
            )
    if d.get("errors"):
        lines += ["", "Sections that failed: " + ", ".join(d["errors"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
