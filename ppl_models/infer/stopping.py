"""When an optimisation has stopped improving, or gone wrong (shared by the SVI loops)."""

from __future__ import annotations

import math


def plateau(history: list[float], window: int, min_delta: float) -> bool:
    """Whether the mean of the last ``window`` values rose by less than ``min_delta``."""
    if len(history) < 2 * window:
        return False
    recent = sum(history[-window:]) / window
    before = sum(history[-2 * window : -window]) / window
    return recent - before < min_delta


def check_finite(value: float, step: int) -> None:
    """Raise a clear error when the loss is NaN or infinite."""
    if not math.isfinite(value):
        raise FloatingPointError(
            f"the ELBO became {value} at step {step}; lower lr or change init"
        )

