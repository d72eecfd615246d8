"""Turning Ray's account of a failed worker group into one paragraph a user can act on."""

from __future__ import annotations


def describe_failure(exc: BaseException, max_failures: int) -> str:
    """A one-paragraph account of why the worker group failed, naming the rank when Ray says it."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    rank = None
    for ln in lines:
        for marker in ("rank=", "world_rank=", "Worker rank ", "rank "):
            if marker in ln:
                tail = ln.split(marker, 1)[1]
                digits = "".join(ch for ch in tail[:6] if ch.isdigit())
                if digits:
                    rank = int(digits)
                    break
        if rank is not None:
            break
    cause = next(
        (ln for ln in reversed(lines) if "Error" in ln or "died" in ln or "exit" in ln.lower()),
        lines[-1] if lines else type(exc).__name__,
    )
    cause = cause.split(" Some common causes")[0]
    who = f"worker rank {rank}" if rank is not None else "a training worker"
    return (
        f"Training failed: {who} failed ({cause[:400]}). Ray Train was allowed {max_failures} restart(s) "
        f"(scaling.max_failures). Re-run the same command to resume from the latest checkpoint; raise "
        f"scaling.max_failures to survive more worker losses. Use --verbose for Ray's full log."
    )
