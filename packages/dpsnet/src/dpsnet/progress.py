"""The progress line every long command prints: ``what done/total unit, rate unit/s, eta H:MM:SS``.

On a terminal :class:`Progress` keeps one line up to date; in a log (not a TTY) it writes a line per quarter of
the work and one at the end, so that logs do not run the updates together. Training writes one such line per
log step (:mod:`dpsnet.training.records`).
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``."""
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_text(label: str, count: str, rate: float, rate_unit: str, eta_s: float, details: str = "") -> str:
    """``"predict: 8/18 images, 3.1 images/s, eta 0:00:03"``; ``details`` go between the count and the rate."""
    eta = format_seconds(eta_s) if math.isfinite(eta_s) else "?"
    return ", ".join([f"{label}: {count}", *([details] if details else []), f"{rate:.1f} {rate_unit}/s", f"eta {eta}"])


class Progress:
    """``progress(done, total)``: the line of :func:`progress_text`, the rate measured since its creation."""

    def __init__(self, label: str, unit: str = "images", stream: TextIO | None = None) -> None:
        self.label, self.unit, self.stream = label, unit, stream
        self.started = time.monotonic()
        self.last_quarter = 0

    def __call__(self, done: int, total: int) -> None:
        stream = self.stream or sys.stderr
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        text = progress_text(self.label, f"{done}/{total} {self.unit}", rate, self.unit,
                             (total - done) / rate if rate > 0 else float("nan"))
        if stream.isatty():
            stream.write("\r" + text + ("\n" if done == total else ""))
        else:
            quarter = 4 * done // max(total, 1)
            if quarter > self.last_quarter or done == total:
                self.last_quarter = max(quarter, self.last_quarter)
                stream.write(text + "\n")
        stream.flush()
