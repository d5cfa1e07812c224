"""Errors the training code raises, shared by the v1 and v2 steps and the loop."""
from __future__ import annotations

from stargan.errors import StarganError


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/inf; raised before any optimizer step so the weights stay good."""

    def __init__(self, step: int, name: str, value: float):
        self.step, self.name, self.value = step, name, value
        super().__init__(f"loss {name} is {value} at step {step}")


class TrainingError(StarganError, RuntimeError):
    """Training could not run or finish; the message says why and what to change."""
