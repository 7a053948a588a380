"""The PNGs of ``ppl-models fit aae|wae|gan|dcgan|infogan``: generated images, the players'
losses, the codes of held-out images (autoencoders) and InfoGAN's code traversals."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppl_models._shared.figures import agg_figure, save_png
from ppl_models.diagnostics.vae_plots import code_scatter, image_grid, square_side

__all__ = ["plot_code_map", "plot_player_losses", "plot_samples", "plot_traversals"]


def _grid(images: np.ndarray, rows: int, cols: int, title: str, path: Path,
          row_titles: list[str] | None = None) -> Path:
    fig = agg_figure(cols * 0.6 + (0.6 if row_titles else 0), rows * 0.6 + 0.4)
    image_grid(fig, images, rows, cols, square_side(images.shape[1]), row_titles)
    fig.suptitle(title)
    return save_png(fig, path)


def plot_samples(model: Any, path: Path, *, n: int = 64, seed: int = 0) -> Path:
    """A grid of ``n`` generated images (``model.generate``, seeded, global RNG untouched)."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images = model.generate(n).clamp(0, 1).cpu().numpy()
    cols = math.ceil(math.sqrt(n))
    return _grid(images, math.ceil(n / cols), cols, f"{type(model).__name__} samples", path)


def plot_traversals(model: Any, path: Path, *, steps: int = 8, seed: int = 0) -> Path:
    """InfoGAN: one row per category c, columns along the first continuous code from -1 to 1,
    the other codes at 0 and the noise z one fixed draw."""
    k, m = model.n_categories, model.n_continuous
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = model.prior_distribution().sample((1,)).expand(k * steps, -1)
        code = torch.arange(k).repeat_interleave(steps)
        style = torch.zeros(k * steps, m)
        if m:
            style[:, 0] = torch.linspace(-1, 1, steps).repeat(k)
        images = model.transform_codes(z, code, style).clamp(0, 1).cpu().numpy()
    along = "first continuous code from -1 to 1" if m else "no continuous code"
    return _grid(images, k, steps, f"rows: category; columns: {along}", path,
                 [f"c={c}" for c in range(k)])


def plot_code_map(model: Any, x: torch.Tensor, labels: Any, path: Path) -> Path:
    """Codes :math:`E(x)` of held-out images in two dimensions, coloured by label; with more
    than two the first two are shown and the title says so."""
    with torch.no_grad():
        codes = model.encode(x).cpu().numpy().astype(np.float64)
    dim = codes.shape[1]
    points = codes[:, :2] if dim >= 2 else np.column_stack([codes[:, 0], np.zeros(len(codes))])
    shown = f"dims 1 and 2 of {dim}" if dim > 2 else f"{dim}-D"
    fig = code_scatter(points, labels, ("z 1", "z 2" if dim >= 2 else "(none)"),
                       f"codes of held-out images ({shown})")
    return save_png(fig, path)


def plot_player_losses(history: dict[str, list[float]], path: Path) -> Path:
    """Per generator step: the discriminator's loss, the generator's adversarial loss and
    each generator term (one line each)."""
    fig = agg_figure(6, 3.5)
    ax = fig.add_subplot()
    skip = ("elbo", "beta")
    for name, values in history.items():
        if name in skip or "second" in name or "time" in name or not values:
            continue
        ax.plot(np.arange(1, len(values) + 1), values, lw=0.8, label=name)
    ax.set_xlabel("generator step")
    ax.set_ylabel("loss")
    ax.set_title("both players' losses")
    ax.legend(fontsize="small")
    return save_png(fig, path)
