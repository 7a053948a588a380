r"""When an optimisation has stopped improving, or gone wrong (shared by the SVI loops).

The ELBO trace of SVI is noisy (each step is a Monte-Carlo estimate), so "has it stopped
rising?" is a statistical question. :func:`elbo_convergence` answers it from the trace alone:

1. Take the last :math:`2W` values (``W = window``) and cut them, in order, into
   :math:`m = \min(20, 2W)` batches of consecutive values; average each batch
   (:math:`\bar y_j` at the batch's mean step :math:`t_j`). Batch means tame the
   autocorrelation of neighbouring steps (the batch-means method, Flegal & Jones, 2010).
2. Fit the least-squares line :math:`\bar y_j = a + b\,t_j`; its slope :math:`b` (ELBO per
   observation per step) has standard error
   :math:`\mathrm{se}(b) = s / \sqrt{\sum_j (t_j - \bar t)^2}` with
   :math:`s^2 = \sum_j r_j^2 / (m - 2)` the residual variance, so a trend does not
   inflate the noise estimate (it would, in the standard error of a window's mean).
3. The trace is **flat**, and the fit ``converged``, when the change over one window
   is within the tolerance plus the noise:

   .. math:: |b|\,W \le \delta + z\,\mathrm{se}(b)\,W,

   with :math:`\delta` = ``min_delta`` (ELBO per observation per window) and
   :math:`z = 2` (:data:`Z_NOISE`). A trace still rising (or falling) by more than
   :math:`\delta` per window beyond its noise is not converged; a flat one is, however noisy.
   With no noise (a deterministic objective) the rule is :math:`|b|\,W \le \delta`.

A trace shorter than :math:`2W` values is never converged. The rule reads the trace only: a
fit whose learning rate has decayed so far that it barely moves shows a flat trace, which is
why :func:`~ppl_models.infer.svi.fit_svi` reads the second half of a full-batch trace by
default (``window = max(100, num_steps // 4)``) rather than a fixed last 200 steps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ppl_models._shared.checks import check_float, check_int

__all__ = ["RULE", "Z_NOISE", "Convergence", "check_finite", "elbo_convergence", "plateau"]

#: How many standard errors of the change count as noise.
Z_NOISE = 2.0
#: Most batches the final two windows are cut into.
MAX_BATCHES = 20
#: The rule's name, recorded with its numbers.
RULE = "|slope| * window <= min_delta + 2 * se(slope) * window over the last 2 windows"


@dataclass(frozen=True)
class Convergence:
    """The verdict of :func:`elbo_convergence` and the numbers it used.

    Attributes
    ----------
    converged : bool
    rule : str
    window : int
        Values per window :math:`W`.
    span : int
        Values read (:math:`2W`, or fewer when the trace is shorter: then not converged).
    batches : int
        Batch means the slope was fitted to (0 when the trace is too short).
    slope, slope_se : float
        Least-squares slope of the batch means (ELBO per observation per step) and its
        standard error (None, as are ``change`` and ``noise``, when the trace is too short).
    change : float
        ``slope * window``: the trend's change over one window.
    noise : float
        ``Z_NOISE * slope_se * window``.
    min_delta : float
        Tolerance on the change per window.
    """

    converged: bool
    rule: str
    window: int
    span: int
    batches: int
    slope: float | None
    slope_se: float | None
    change: float | None
    noise: float | None
    min_delta: float

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for ``FitResult.info["convergence"]``."""
        return asdict(self)


def _batch_means(values: Sequence[float], m: int) -> tuple[list[float], list[float]]:
    """Means of ``m`` consecutive batches of ``values`` (sizes differing by at most one), and
    the mean position of each batch."""
    n = len(values)
    bounds = [round(j * n / m) for j in range(m + 1)]
    means, centres = [], []
    for lo, hi in itertools.pairwise(bounds):
        means.append(math.fsum(values[lo:hi]) / (hi - lo))
        centres.append((lo + hi - 1) / 2)
    return means, centres


def _slope(y: Sequence[float], t: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of ``y`` on ``t`` and its standard error (0 with two points)."""
    m = len(y)
    t_bar, y_bar = math.fsum(t) / m, math.fsum(y) / m
    sxx = math.fsum((ti - t_bar) ** 2 for ti in t)
    b = math.fsum((ti - t_bar) * (yi - y_bar) for ti, yi in zip(t, y, strict=True)) / sxx
    if m < 3:
        return b, 0.0
    rss = math.fsum((yi - y_bar - b * (ti - t_bar)) ** 2 for ti, yi in zip(t, y, strict=True))
    return b, math.sqrt(rss / (m - 2) / sxx)


def elbo_convergence(history: Sequence[float], window: int, min_delta: float) -> Convergence:
    """Whether an ELBO trace is flat within ``min_delta`` per ``window`` plus its noise.

    The rule is the module's (:mod:`ppl_models.infer.stopping`): a least-squares slope over
    batch means of the last ``2 * window`` values, and its standard error.

    Parameters
    ----------
    history : sequence of float
        The ELBO (per observation) at each step or epoch.
    window : int
        Steps (or epochs) per window, at least 1.
    min_delta : float
        Tolerance on the trend's change over one window, at least 0.

    Returns
    -------
    Convergence
        The verdict and the numbers behind it.
    """
    window = check_int(window, "window")
    min_delta = check_float(min_delta, "min_delta", minimum=0)
    span = min(len(history), 2 * window)
    m = min(MAX_BATCHES, span)
    if len(history) < 2 * window:
        return Convergence(False, RULE, window, span, 0, None, None, None, None, min_delta)
    means, centres = _batch_means([float(v) for v in history[-span:]], m)
    slope, slope_se = _slope(means, centres)
    change, noise = slope * window, Z_NOISE * slope_se * window
    converged = abs(change) <= min_delta + noise
    return Convergence(bool(converged), RULE, window, span, m, slope, slope_se, change, noise,
                       min_delta)


def plateau(history: Sequence[float], window: int, min_delta: float) -> bool:
    """Whether the ELBO trace is flat (:func:`elbo_convergence`); early stopping and
    ``converged`` of SVI use it."""
    return elbo_convergence(history, window, min_delta).converged


def check_finite(value: float, step: int) -> None:
    """Raise a clear error when the loss is NaN or infinite."""
    if not math.isfinite(value):
        raise FloatingPointError(
            f"the ELBO became {value} at step {step}; lower lr or change init"
        )
