"""A progress line on stderr with count, rate and ETA (no dependency, quiet when not wanted)."""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Report ``done/total`` with items per second and the time left, at most every ``interval`` seconds."""

    def __init__(self, total: int, desc: str, *, unit: str = "images", enabled: bool = True, interval: float = 0.5):
        self.total, self.desc, self.unit, self.enabled, self.interval = total, desc, unit, enabled, interval
        self.done = 0
        self.start = time.monotonic()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.interval or self.done == self.total):
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = f"{self.desc}: {self.done}/{self.total} {self.unit} ({rate:.1f}/s, ETA {_clock(eta)})"
        end = "" if self.tty and self.done < self.total else "\n"
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)
