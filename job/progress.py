"""A small progress bar for long commands (synth, prepare, validate), on stderr.

It redraws in place on a terminal and prints a line every 10 % otherwise, so logs in CI and
Kubernetes stay readable.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """Progress of `total` units; call `update(done, total)` and `close()`."""

    def __init__(self, label: str, unit: str = "items", enabled: bool = True):
        self.label, self.unit, self.enabled = label, unit, enabled
        self.start = time.perf_counter()
        self._tty = sys.stderr.isatty()
        self._last_decile = -1
        self._done = 0

    def update(self, done: int, total: int) -> None:
        self._done = done
        if not self.enabled or total <= 0:
            return
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        text = f"{self.label}: {done}/{total} {self.unit} ({100 * done / total:.0f}%, {rate:.0f} {self.unit}/s)"
        if self._tty:
            bar = "#" * int(30 * done / total)
            sys.stderr.write(f"\r[{bar:<30}] {text}")
            sys.stderr.flush()
        else:
            decile = int(10 * done / total)
            if decile != self._last_decile:
                self._last_decile = decile
                print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self._tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
