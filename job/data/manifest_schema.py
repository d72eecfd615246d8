"""The shape dataset.json must have before anything trusts it.

A manifest is written by `prepare`/`synth`, but it is a plain file that scripts and people
edit and that anyone with write access to the bucket can replace. Every load checks it here:
types (integers are integers, not floats, strings, booleans or NaN), ranges (no negative or
impossible counts), class names (non-empty, unique after Unicode normalisation) and shard
paths (relative, inside the data set root, no `..`, no scheme, no bucket of their own).

The counts must also agree with each other: a shard's label counts cannot exceed its
examples, a split's totals are the sums of its shards, and a shard of N examples is at least
N × MIN_RECORD_BYTES long, so an inflated count (an endless epoch when checksums are off) is
caught without reading a byte of data. Readers then compare the count with the records they
actually find (`pipeline.load_shard_arrays`, the Ray Data reads, `validate`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from job.data.labels import normalize_label

# A record holds at least its framing (TFRecord: 16 bytes) and an encoded image, which no
# format makes shorter than this; Parquet rows are larger still.
MIN_RECORD_BYTES = 16
# S3's largest object; no shard can be larger.
MAX_SHARD_BYTES = 5 * 1024**4
# More classes than any multi-label head this product builds; guards absurd allocations.
MAX_CLASSES = 100_000
# Problems listed in one error; the rest are counted.
MAX_LISTED = 8

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GENERATION = re.compile(r"^[0-9A-Za-z-]{0,64}$")
_SHARD_KEYS = {"path", "num_examples", "size_bytes", "sha256", "label_counts"}


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python; JSON true/false are not counts.
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any, where: str, problems: list[str], *, upper: int | None = None) -> int | None:
    """`value` if it is a non-negative integer (at most `upper`), else None with a problem noted."""
    if not _is_int(value):
        shown = "NaN" if isinstance(value, float) and math.isnan(value) else repr(value)
        problems.append(f"{where} must be a whole number, got {shown}")
        return None
    if value < 0 or (upper is not None and value > upper):
        problems.append(f"{where} must be in 0..{upper if upper is not None else 'inf'}, got {value}")
        return None
    return value


def shard_path_problem(path: Any) -> str | None:
    """Why `path` cannot be a shard path inside the data set root, or None if it can."""
    if not isinstance(path, str) or not path:
        return f"must be a non-empty string, got {path!r}"
    if "://" in path or path.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", path):
        return f"must be relative to the data set root, got {path!r}"
    if "\\" in path or any(ord(ch) < 32 for ch in path):
        return f"must use '/' and printable characters only, got {path!r}"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return f"must stay inside the data set root (no empty, '.' or '..' parts), got {path!r}"
    return None


def _check_class_names(names: Any, problems: list[str]) -> int | None:
    if not isinstance(names, list) or not names:
        problems.append(f"class_names must be a non-empty list of label names, got {names!r}")
        return None
    if len(names) > MAX_CLASSES:
        problems.append(f"class_names lists {len(names)} names; at most {MAX_CLASSES} are supported")
        return None
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        problems.append(f"class_names must be non-empty strings, got {', '.join(map(repr, bad[:5]))}")
        return None
    seen: dict[str, str] = {}
    for name in names:
        key = normalize_label(name)
        if key in seen:
            same = "twice" if seen[key] == name else f"and {seen[key]!r} (the same name in Unicode NFC)"
            problems.append(f"class_names lists {name!r} {same}; each label must appear once")
            return None
        seen[key] = name
    return len(names)


def _check_shard(shard: Any, where: str, width: int | None, problems: list[str]) -> int:
    """Problems of one shard entry; returns its example count (0 when unusable)."""
    if not isinstance(shard, dict):
        problems.append(f"{where} must be an object, got {type(shard).__name__}")
        return 0
    keys = set(shard)
    if keys != _SHARD_KEYS:
        missing, extra = sorted(_SHARD_KEYS - keys), sorted(keys - _SHARD_KEYS)
        problems.append(
            f"{where} must have exactly the keys {', '.join(sorted(_SHARD_KEYS))}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(extra)}" if extra else "")
        )
        return 0
    path_problem = shard_path_problem(shard["path"])
    if path_problem:
        problems.append(f"{where}.path {path_problem}")
    size = _count(shard["size_bytes"], f"{where}.size_bytes", problems, upper=MAX_SHARD_BYTES)
    examples = _count(shard["num_examples"], f"{where}.num_examples", problems)
    if not isinstance(shard["sha256"], str) or not _SHA256.match(shard["sha256"]):
        problems.append(f"{where}.sha256 must be 64 lowercase hex digits, got {shard['sha256']!r}")
    if examples is not None and size is not None and examples * MIN_RECORD_BYTES > size:
        problems.append(
            f"{where} claims {examples} examples in {size} bytes; a record takes at least {MIN_RECORD_BYTES} "
            "bytes, so the count is wrong"
        )
    counts = shard["label_counts"]
    if not isinstance(counts, list):
        problems.append(f"{where}.label_counts must be a list of whole numbers, got {counts!r}")
    else:
        if width is not None and len(counts) != width:
            problems.append(
                f"{where}.label_counts has {len(counts)} entries but class_names lists {width}: "
                "the label width does not match"
            )
        for i, c in enumerate(counts):
            if _count(c, f"{where}.label_counts[{i}]", problems, upper=examples) is None:
                break
    return examples or 0


def manifest_problems(obj: Any, formats: tuple[str, ...], split_names: tuple[str, ...]) -> list[str]:
    """Everything wrong with a parsed dataset.json, in words; [] when it can be trusted."""
    if not isinstance(obj, dict):
        return [f"the manifest must be a JSON object, got {type(obj).__name__}"]
    problems: list[str] = []
    missing = [k for k in ("format_version", "format", "class_names", "splits") if k not in obj]
    if missing:
        return [f"missing key(s) {', '.join(missing)}"]
    if obj["format"] not in formats:
        problems.append(f"format must be one of {', '.join(formats)}, got {obj['format']!r}")
    for key in ("image_encoding", "generation"):
        if key in obj and not isinstance(obj[key], str):
            problems.append(f"{key} must be a string, got {obj[key]!r}")
    if isinstance(obj.get("generation"), str) and not _GENERATION.match(obj["generation"]):
        problems.append(f"generation must be letters, digits and '-', got {obj['generation']!r}")
    if "source" in obj and not isinstance(obj["source"], dict):
        problems.append(f"source must be an object, got {obj['source']!r}")
    width = _check_class_names(obj["class_names"], problems)
    splits = obj["splits"]
    if not isinstance(splits, dict):
        return problems + [f"splits must be an object of {', '.join(split_names)}, got {splits!r}"]
    unknown = sorted(set(splits) - set(split_names))
    if unknown:
        listed = ", ".join(map(repr, unknown))
        problems.append(f"splits has unknown split(s) {listed}; expected {', '.join(split_names)}")
    paths: dict[str, str] = {}
    for name in (n for n in split_names if n in splits):
        body = splits[name]
        where = f"splits.{name}"
        if not isinstance(body, dict) or not isinstance(body.get("shards"), list):
            problems.append(f"{where} must be an object with a list of shards")
            continue
        total, before = 0, len(problems)
        for i, shard in enumerate(body["shards"]):
            total += _check_shard(shard, f"{where}.shards[{i}]", width, problems)
            path = shard.get("path") if isinstance(shard, dict) else None
            if isinstance(path, str):
                if path in paths:
                    problems.append(f"{where}.shards[{i}].path {path!r} is also listed at {paths[path]}")
                paths[path] = f"{where}.shards[{i}]"
        # A total only means something when every shard's count could be read.
        if "num_examples" in body and body["num_examples"] != total and len(problems) == before:
            problems.append(f"{where}.num_examples is {body['num_examples']!r} but its shards hold {total}")
    return problems


def describe_problems(problems: list[str]) -> str:
    """The first problems as an indented list, and how many more there are."""
    listed = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return listed + more
