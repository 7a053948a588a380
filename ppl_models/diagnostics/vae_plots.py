r"""Pictures of a fitted VAE: prior samples, reconstructions, latent map, interpolations.

All figures are :class:`matplotlib.figure.Figure` objects on the Agg canvas (no ``pyplot``,
so nothing stays open); each function returns its figure (shown as an image when a notebook
cell returns it, :mod:`ppl_models._shared.figures`) and, given ``path``, writes a PNG.
Images are shown as squares of side :math:`\sqrt D` (8x8 digits, 28x28 MNIST).

* prior samples: the decoder's mean :math:`\mathbb E[x \mid z]`, :math:`z \sim p(z)`;
* reconstructions: inputs (top row) over :math:`\mathbb E[x \mid z = \mu_\phi(x)]` (bottom);
* latent map: the posterior means :math:`\mu_\phi(x)` in 2-D (their first two principal
  components when :math:`L > 2`), coloured by label;
* interpolations: decoder means along :math:`(1 - t) \mu_\phi(x_a) + t \mu_\phi(x_b)`;
* cluster samples (GMVAE): for each label :math:`y`, decoder means of
  :math:`z \sim p(z \mid y)` (Dilokthanakul et al. 2016).

References
----------
Kingma, D. P. & Welling, M. (2014). Auto-encoding variational Bayes. ICLR.
Dilokthanakul, N. et al. (2016). Deep unsupervised clustering with Gaussian mixture
variational autoencoders. arXiv:1611.02648.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ppl_models._shared.figures import agg_figure, write_png
from ppl_models.models import AmortizedModel, LabelledAmortized

__all__ = [
    "VAE_PLOTS",
    "code_scatter",
    "image_grid",
    "plot_cluster_samples",
    "plot_interpolations",
    "plot_latent_map",
    "plot_prior_samples",
    "plot_reconstructions",
    "save_vae_plots",
    "square_side",
]





def square_side(n_pixels: int) -> int:
    """Side of square images of ``n_pixels`` pixels (8 for digits, 28 for MNIST)."""
    side = math.isqrt(int(n_pixels))
    if side * side != n_pixels:
        raise ValueError(f"cannot show inputs of {n_pixels} pixels as square images")
    return side


def image_side(model: Any) -> int:
    """Side of the square images the model takes (8 for digits, 28 for MNIST)."""
    return square_side(model.input_dim)


def _mean(model: Any, z: torch.Tensor) -> np.ndarray:
    """Decoder means :math:`\\mathbb E[x \\mid z]` as ``(n, D)`` NumPy."""
    return model.decode(z).mean.detach().cpu().numpy()


def _posterior_means(model: AmortizedModel, x: torch.Tensor) -> torch.Tensor:
    """:math:`\\mathbb E_q[z \\mid x]` (the model's ``code_mean``)."""
    return model.code_mean(x)


def image_grid(fig: Figure, images: np.ndarray, rows: int, cols: int, side: int,
               row_titles: list[str] | None = None) -> None:
    """Draw ``(n, side * side)`` images in [0, 1] as a ``rows x cols`` grid on ``fig`` (cells
    past ``n`` left blank), with an optional title to the left of each row."""
    axes = fig.subplots(rows, cols, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if index < len(images):
            ax.imshow(images[index].reshape(side, side), cmap="gray", vmin=0, vmax=1)
        else:
            ax.set_axis_off()
    if row_titles:
        for r, title in enumerate(row_titles):
            axes[r, 0].set_ylabel(title, rotation=0, ha="right", va="center")


def plot_prior_samples(model: Any, path: str | Path | None = None, *, n: int = 64,
                       seed: int = 0) -> Figure:
    r"""Grid of decoder means at :math:`z \sim p(z)` (``n`` samples)."""
    side = image_side(model)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = model.prior_distribution().sample((n,))
        images = _mean(model, z)
    fig = agg_figure(cols * 0.6, rows * 0.6)
    image_grid(fig, images, rows, cols, side)
    fig.suptitle("samples from the prior")
    write_png(fig, path)
    return fig


def plot_reconstructions(model: Any, x: torch.Tensor, path: str | Path | None = None, *,
                         n: int = 10) -> Figure:
    r"""Inputs (top row) and decoder means at the posterior mean (bottom row)."""
    side = image_side(model)
    x = x[:n]
    with torch.no_grad():
        recon = _mean(model, _posterior_means(model, x))
    images = np.concatenate([x.detach().cpu().numpy(), recon])
    fig = agg_figure(len(x) * 0.7, 1.6)
    image_grid(fig, images, 2, len(x), side, ["input", "output"])
    write_png(fig, path)
    return fig


def code_scatter(points: np.ndarray, labels: Any, axis_names: tuple[str, str],
                 title: str) -> Figure:
    """A figure of 2-D codes ``(N, 2)``, coloured by ``labels`` (``tab10``, with a colour bar)
    when they are given."""
    fig = agg_figure(5, 4.5)
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    else:
        colours = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        scatter = ax.scatter(points[:, 0], points[:, 1], c=colours, cmap="tab10", s=4,
                             alpha=0.7)
        fig.colorbar(scatter, ax=ax, label="label")
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(title)
    return fig


def plot_latent_map(model: Any, x: torch.Tensor, labels: Any = None,
                    path: str | Path | None = None) -> Figure:
    """Posterior means in 2-D (PCA when the code has more than two dimensions), by label."""
    with torch.no_grad():
        codes = _posterior_means(model, x).cpu().numpy().astype(np.float64)
    if codes.shape[1] > 2:
        centred = codes - codes.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        points, axis = centred @ vt[:2].T, "principal component"
    else:
        points = codes if codes.shape[1] == 2 else np.column_stack([codes[:, 0],
                                                                    np.zeros(len(codes))])
        axis = "z"
    fig = code_scatter(points, labels, (f"{axis} 1", f"{axis} 2"), "posterior means of the code")
    write_png(fig, path)
    return fig


def plot_interpolations(model: Any, x: torch.Tensor, path: str | Path | None = None, *,
                        steps: int = 10, pairs: int = 4) -> Figure:
    """Decoder means along straight lines between posterior means of consecutive inputs."""
    side = image_side(model)
    pairs = max(1, min(pairs, x.shape[0] // 2))
    t = torch.linspace(0, 1, steps, dtype=x.dtype)[:, None]
    rows = []
    with torch.no_grad():
        codes = _posterior_means(model, x[: 2 * pairs])
        for p in range(pairs):
            a, b = codes[2 * p], codes[2 * p + 1]
            rows.append(_mean(model, (1 - t) * a + t * b))
    fig = agg_figure(steps * 0.6, pairs * 0.65)
    image_grid(fig, np.concatenate(rows), pairs, steps, side)
    fig.suptitle("interpolations between posterior means")
    write_png(fig, path)
    return fig


def plot_cluster_samples(model: Any, path: str | Path | None = None, *, per_cluster: int = 8,
                         seed: int = 0) -> Figure:
    r"""One row per label y of a GMVAE: decoder means at :math:`z \sim p(z \mid y)`."""
    if not isinstance(model, LabelledAmortized):
        raise ValueError(f"{type(model).__name__} has no cluster labels (a GMVAE has)")
    side = image_side(model)
    k = model.n_components
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = model.code_given_label().sample((per_cluster,))  # (S, K, L)
        images = _mean(model, z.transpose(0, 1).reshape(k * per_cluster, -1))
    fig = agg_figure(per_cluster * 0.6, k * 0.6)
    image_grid(fig, images, k, per_cluster, side, [f"y={j}" for j in range(k)])
    write_png(fig, path)
    return fig


def _is_gmvae(model: Any) -> bool:
    return isinstance(model, LabelledAmortized)


#: PNGs of :func:`save_vae_plots`: file name -> (applies to the model?, draw(model, x, labels,
#: path)).
VAE_PLOTS: dict[str, tuple[Callable[[Any], bool], Callable[..., Figure]]] = {
    "prior_samples.png": (lambda m: True, lambda m, x, y, p: plot_prior_samples(m, p)),
    "reconstructions.png": (lambda m: True, lambda m, x, y, p: plot_reconstructions(m, x, p)),
    "latent_map.png": (lambda m: True, lambda m, x, y, p: plot_latent_map(m, x, y, p)),
    "interpolations.png": (lambda m: True, lambda m, x, y, p: plot_interpolations(m, x, p)),
    "cluster_samples.png": (_is_gmvae, lambda m, x, y, p: plot_cluster_samples(m, p)),
}


def save_vae_plots(model: Any, x: torch.Tensor, labels: Any, out_dir: str | Path) -> list[Path]:
    """Write every plot that applies to ``model`` into ``out_dir``; return the paths.

    Parameters
    ----------
    model : VAE or GMVAE
        A fitted model (its networks hold the fit).
    x : Tensor (N, D)
        Images to reconstruct, map and interpolate (e.g. the test set; up to 2000 mapped).
    labels : Tensor (N,) or None
        Colours of the latent map.
    out_dir : path
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = model.validate(x)[:2000]
    labels = None if labels is None else labels[:2000]
    written = []
    was_training = model.training
    model.eval()
    try:
        for name, (applies, draw) in VAE_PLOTS.items():
            if applies(model):
                fig = draw(model, x, labels, out_dir / name)
                fig.clear()
                written.append(out_dir / name)
    finally:
        model.train(was_training)
    return written
