r"""The picture of :func:`~ppl_models.diagnostics.amortized.amortized_diagnostics`: the
encoder's PSIS k-hat against the observation, and the images it gets worst.

Left, k-hat of every observation (Vehtari et al. 2024) with ArviZ's bands: at most 0.5 good,
0.5-0.7 acceptable, above 0.7 the importance weights of :math:`p(x, z) / q(z \mid x)` are too
heavy-tailed to trust (the encoder misses the posterior of that observation). An exact
encoder's :math:`-\infty` is drawn at the bottom edge. Right, when the observations are square
images, those with the largest k-hat, each titled with its k-hat.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ppl_models._arviz import az
from ppl_models._shared.checks import check_int
from ppl_models._shared.figures import agg_figure, write_png
from ppl_models.diagnostics.amortized import AMORTIZED_GROUP, KHAT_BAD, KHAT_GOOD
from ppl_models.diagnostics.vae_plots import image_grid, square_side

__all__ = ["plot_khat"]

#: Colours of the three k-hat bands (good, acceptable, bad).
_BAND_COLOURS = ("tab:blue", "tab:orange", "tab:red")


def _as_numpy(data: Any, n_obs: int) -> np.ndarray:
    array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if array.ndim != 2 or array.shape[0] != n_obs:
        raise ValueError(
            f"data must be the {n_obs} observations the diagnostics were computed on, as an "
            f"(N, D) array; got shape {tuple(array.shape)}"
        )
    return array.astype(float)


def _unit_range(images: np.ndarray) -> np.ndarray:
    """Images in [0, 1] as they are; any other range rescaled to it (for display)."""
    low, high = float(images.min()), float(images.max())
    if low >= 0 and high <= 1:
        return images
    return (images - low) / (high - low) if high > low else np.zeros_like(images)


def plot_khat(
    idata: az.InferenceData,
    data: Any = None,
    path: str | Path | None = None,
    *,
    n_worst: int = 16,
) -> Figure:
    """k-hat per observation (scatter with the 0.5 and 0.7 lines) and the worst images.

    Parameters
    ----------
    idata : arviz.InferenceData
        From :func:`~ppl_models.diagnostics.amortized_diagnostics`.
    data : array-like (N, D), optional
        The observations it was computed on; when given and ``D`` is a square number, a grid
        of the ``n_worst`` observations with the largest k-hat is drawn beside the scatter.
    path : str or Path, optional
        Where to write the PNG.
    n_worst : int
        Images in the grid.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(idata, az.InferenceData) or AMORTIZED_GROUP not in idata.groups():
        raise ValueError(
            f"plot_khat needs the InferenceData of amortized_diagnostics (an "
            f"'{AMORTIZED_GROUP}' group); got {type(idata).__name__}"
        )
    n_worst = check_int(n_worst, "n_worst")
    khat = np.asarray(idata[AMORTIZED_GROUP]["khat"].values, dtype=float)
    obs = np.asarray(idata[AMORTIZED_GROUP]["obs"].values)
    side = None
    images = None
    if data is not None:
        images = _as_numpy(data, len(khat))
        try:
            side = square_side(images.shape[1])
        except ValueError:
            side = None
    with_grid = side is not None
    shown = min(n_worst, len(khat))
    grid_rows = math.ceil(shown / math.ceil(math.sqrt(shown)))
    fig = agg_figure(11.0 if with_grid else 6.5, max(4.0, 1.1 * grid_rows + 0.6))
    left, right = fig.subfigures(1, 2, width_ratios=[1.3, 1]) if with_grid else (fig, None)
    _scatter(left.subplots(), obs, khat, int(idata[AMORTIZED_GROUP].attrs["num_particles"]))
    if with_grid and right is not None and images is not None and side is not None:
        order = np.argsort(np.where(np.isfinite(khat), khat, -np.inf))[::-1][:n_worst]
        cols = math.ceil(math.sqrt(len(order)))
        rows = math.ceil(len(order) / cols)
        image_grid(right, _unit_range(images[order]), rows, cols, side)
        for ax, index in zip(right.axes, order, strict=False):
            ax.set_title(f"#{obs[index]}: {khat[index]:.2f}", fontsize=7, pad=2)
        right.suptitle(f"the {len(order)} observations with the largest k-hat")
    write_png(fig, path)
    return fig


def _scatter(ax: Any, obs: np.ndarray, khat: np.ndarray, num_particles: int) -> None:
    finite = khat[np.isfinite(khat)]
    bottom = min(-0.5, float(finite.min()) - 0.05) if finite.size else -0.5
    shown = np.where(np.isneginf(khat), bottom, khat)
    bands = np.digitize(shown, [KHAT_GOOD, KHAT_BAD], right=True)
    for band, (colour, label) in enumerate(zip(
        _BAND_COLOURS, (f"<= {KHAT_GOOD}", f"{KHAT_GOOD}-{KHAT_BAD}", f"> {KHAT_BAD}"),
        strict=True,
    )):
        chosen = bands == band
        ax.scatter(obs[chosen], shown[chosen], s=8, color=colour,
                   label=f"{label}: {int(chosen.sum())}")
    for level in (KHAT_GOOD, KHAT_BAD):
        ax.axhline(level, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("observation")
    ax.set_ylabel("PSIS k-hat of the encoder")
    exact = int(np.isneginf(khat).sum())
    note = f" ({exact} exact: -inf, at the bottom)" if exact else ""
    ax.set_title(f"importance weights p(x, z) / q(z | x), K = {num_particles}{note}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="best")
