"""The progress bar of long commands (synth, prepare, validate), on stderr, drawn by tqdm.

On a terminal tqdm redraws in place. Without one (CI, `kubectl logs`) tqdm would still
redraw with carriage returns, which reads as one endless line, so there we print tqdm's
status text as a plain line at most every 10 s, and once at the end.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

# Seconds between printed lines when stderr is not a terminal.
LOG_INTERVAL_SECONDS = 10.0


class Progress:
    """Progress of `total` units; call `update(done, total)` and `close()`."""

    def __init__(self, label: str, unit: str = "items", enabled: bool = True):
        self.label, self.unit, self.enabled = label, unit, enabled
        self._tty = sys.stderr.isatty()
        self._bar = tqdm(desc=label, unit=f" {unit}", file=sys.stderr, disable=not (enabled and self._tty))
        self._start = self._last_line = time.monotonic()

    def update(self, done: int, total: int) -> None:
        if self._tty:
            if self._bar.total != total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)
            return
        now = time.monotonic()
        if self.enabled and total > 0 and (done >= total or now - self._last_line >= LOG_INTERVAL_SECONDS):
            self._last_line = now
            print(
                tqdm.format_meter(done, total, now - self._start, prefix=self.label, unit=f" {self.unit}", ascii=True),
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        self._bar.close()
