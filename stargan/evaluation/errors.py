"""The one way a metric says "not here": a reason and the setting that fixes it."""
from __future__ import annotations


class MetricUnavailable(RuntimeError):
    """A metric that cannot be computed here: ``reason`` says why, ``fix`` what setting fixes it."""

    def __init__(self, reason: str, fix: str = ""):
        super().__init__(reason + (f". Fix: {fix}" if fix else ""))
        self.reason, self.fix = reason, fix
