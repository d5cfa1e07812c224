"""One progress line for every long-running step: done/total, rate and time left, on stderr, at
most every few seconds (a line, not a redrawn bar, so CI logs and `dvc repro` stay readable)."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def duration(seconds: float) -> str:
    """'42s', '3m05s', '2h07m'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """``update(done)`` prints ``<label>: <done>/<total> <unit> (<pct>%), <rate> <unit>/s, ETA <t>``
    when ``every_s`` passed since the last line, and always at the end. ``scale`` converts the
    counted quantity to the shown unit (bytes -> MiB: ``2**-20``); ``total`` may be unknown (None)."""

    def __init__(self, label: str, total: float | None, unit: str, *, scale: float = 1.0, every_s: float = 2.0,
                 enabled: bool = True, stream: TextIO | None = None, start: float | None = None):
        self.label, self.total, self.unit, self.scale = label, total, unit, scale
        self.every_s, self.enabled, self.stream = every_s, enabled, stream
        self.t0 = self.last = time.monotonic()
        self.start = start          # None: the first update's value (a resumed download)

    def due(self, done: float) -> bool:
        """Whether ``update(done)`` would print now: for a note that costs something to compute."""
        finished = self.total is not None and done >= self.total
        return self.enabled and (finished or time.monotonic() - self.last >= self.every_s)

    def update(self, done: float, note: str = "") -> None:
        """``done`` so far (from the first call's value on, for the rate: a resumed download)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.start is None:
            self.start = done
        finished = self.total is not None and done >= self.total
        if now - self.last < self.every_s and not finished:
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        fmt = (lambda v: f"{v * self.scale:.1f}") if self.scale != 1 else (lambda v: f"{v:.0f}")
        line = f"{self.label}: {fmt(done)}"
        if self.total:
            line += f"/{fmt(self.total)} {self.unit} ({100 * done / self.total:.0f}%)"
        else:
            line += f" {self.unit}"
        line += f", {fmt(rate)} {self.unit}/s"
        if self.total and rate > 0 and not finished:
            line += f", ETA {duration((self.total - done) / rate)}"
        # sys.__stderr__, not sys.stderr: Ray Train wraps a worker's sys.stderr and its patched print
        # then writes each line twice (through the wrapper and through its logger).
        print(line + (f", {note}" if note else ""), file=self.stream or sys.__stderr__ or sys.stderr, flush=True)
