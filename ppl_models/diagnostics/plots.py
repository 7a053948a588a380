"""Plots of a fit: the mixture over its data, the objective's history, traces and posteriors.

Figures are :class:`matplotlib.figure.Figure` objects drawn and saved with the Agg renderer
without going through ``pyplot``: nothing is registered with pyplot's figure manager, so no
figure stays open (and the interactive backend of a session is left alone). Every function
returns its figure (a :class:`~ppl_models._shared.figures.DisplayFigure`, which a notebook
cell that returns it shows as an image) and, given ``path``, also writes it as a PNG.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from ppl_models._arviz import az
from ppl_models._shared.figures import agg_figure, write_png
from ppl_models.diagnostics.inference_data import feature_names, full_draws, to_inference_data
from ppl_models.diagnostics.relabel import relabel_result
from ppl_models.diagnostics.summary import is_point_estimate
from ppl_models.infer.result import FitResult
from ppl_models.models import FiniteMixture

__all__ = [
    "plot_mixture",
    "plot_objective",
    "plot_posterior",
    "plot_trace",
    "save_plots",
]

#: Sites shown by the trace and posterior plots (those present).
DEFAULT_VARS: tuple[str, ...] = ("weights", "locs", "scale")




def _mean_moments(result: FitResult) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Site params, weights, means and covariances to draw (canonical labels).

    The point estimate for EM; for draws the posterior means of the relabelled weights,
    locations and covariance matrices (averaging covariances, not their factors, keeps them
    valid), with the site params rebuilt from those moments.
    """
    model = result.model
    d = result.n_features
    relabelled = relabel_result(result)
    dtype = result.data.dtype
    if relabelled.draws is None:
        params = {k: torch.as_tensor(v).to(dtype) for k, v in relabelled.params.items()}
        full = model.full_params(params, d)
        weights, locs = full["weights"], full["locs"]
        cov = model.covariances(full)
    else:
        draws = {k: torch.as_tensor(v).to(dtype) for k, v in relabelled.draws.items()}
        full = full_draws(model, draws, d, 2)
        weights = full["weights"].mean((0, 1))
        locs = full["locs"].mean((0, 1))
        cov = model.covariances(full).mean((0, 1))
        params = model.site_params_from_moments(weights, locs, cov)
    return params, weights.numpy(), locs.numpy(), cov.numpy()


def _ellipse(mean, cov2, n_sigma: float, color, **kwargs) -> Ellipse:
    """The ``n_sigma`` Mahalanobis contour of a 2-D Gaussian."""
    values, vectors = np.linalg.eigh(cov2)
    values = np.clip(values, 0.0, None)
    angle = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))
    width, height = 2 * n_sigma * np.sqrt(values[::-1])
    return Ellipse(mean, width, height, angle=angle, fill=False, edgecolor=color, **kwargs)


def plot_mixture(result: FitResult, path: str | Path | None = None) -> Figure:
    """The data coloured by their most probable component, with the fitted components.

    Two features or more: a scatter of the first two features (named in the title when there
    are more than two), each component's mean (a
    cross) and the 1- and 2-sigma ellipses of its covariance (marginal over the first two
    features). One feature: a stacked histogram by label with each weighted component density,
    its mean, and its 1- and 2-sigma intervals. The components are the point estimate (EM) or
    the posterior means of the relabelled draws, in the canonical order of
    :func:`~ppl_models.diagnostics.relabel.relabel_result`; the legend gives their weights.

    Parameters
    ----------
    result : FitResult
        A fit of a :class:`~ppl_models.models.FiniteMixture` (its components are drawn as
        Gaussian moments).
    path : str or Path, optional
        Where to write the PNG.

    Returns
    -------
    matplotlib.figure.Figure
    """
    model = result.model
    if not isinstance(model, FiniteMixture):
        raise ValueError(f"plot_mixture draws finite mixtures; got {type(model).__name__}")
    data = result.data.detach()
    params, weights, locs, cov = _mean_moments(result)
    with torch.no_grad():
        resp = model.responsibilities(data, params)
    labels = resp.argmax(-1).numpy()
    x = data.numpy()
    names = feature_names(result)
    k = locs.shape[0]
    colors = [f"C{i % 10}" for i in range(k)]
    fig = agg_figure(7.0, 5.5)
    ax = fig.add_subplot()
    if x.shape[1] == 1:
        _mixture_1d(ax, x[:, 0], labels, weights, locs[:, 0], np.sqrt(cov[:, 0, 0]), colors)
        ax.set_xlabel(names[0])
        ax.set_ylabel("density")
    else:
        for j in range(k):
            mask = labels == j
            ax.scatter(x[mask, 0], x[mask, 1], s=12, color=colors[j], alpha=0.6, linewidths=0)
        for j in range(k):
            ax.scatter(
                locs[j, 0],
                locs[j, 1],
                marker="X",
                s=120,
                color=colors[j],
                edgecolor="black",
                label=f"component {j} (weight {weights[j]:.2f})",
            )
            for n_sigma, style in ((1, "-"), (2, "--")):
                ax.add_patch(
                    _ellipse(
                        locs[j, :2],
                        cov[j, :2, :2],
                        n_sigma,
                        colors[j],
                        linestyle=style,
                        linewidth=1.5,
                    )
                )
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.autoscale_view()
    how = "point estimate" if result.draws is None else "posterior mean"
    title = f"{model.name}, K={k} ({result.method.upper()} {how})"
    title += "; ellipses: 1 and 2 sigma" if x.shape[1] > 1 else "; bars: 1 and 2 sigma"
    if x.shape[1] > 2:
        title += f"\nshowing {names[0]} and {names[1]} of {x.shape[1]} features"
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    write_png(fig, path)
    return fig


def _mixture_1d(ax, x, labels, weights, means, sds, colors) -> None:
    k = len(means)
    bins = np.histogram_bin_edges(x, bins="auto")
    groups = [x[labels == j] for j in range(k)]
    ax.hist(groups, bins=bins, stacked=True, density=True, color=colors, alpha=0.5)
    grid = np.linspace(bins[0], bins[-1], 400)
    top = 0.0
    for j in range(k):
        pdf = (
            weights[j]
            * np.exp(-0.5 * ((grid - means[j]) / sds[j]) ** 2)
            / (sds[j] * math.sqrt(2 * math.pi))
        )
        top = max(top, pdf.max())
        ax.plot(
            grid,
            pdf,
            color=colors[j],
            linewidth=2,
            label=f"component {j} (weight {weights[j]:.2f})",
        )
        ax.axvline(means[j], color=colors[j], linestyle=":", linewidth=1)
    for j in range(k):
        y = -0.04 * (j + 1) * max(top, 1e-12)
        ax.errorbar(means[j], y, xerr=2 * sds[j], color=colors[j], capsize=3, linewidth=1)
        ax.errorbar(means[j], y, xerr=sds[j], color=colors[j], capsize=0, linewidth=3, marker="o")


_TITLES = {
    "objective": "objective per observation",
    "log_likelihood": "log-likelihood per observation",
    "elbo": "ELBO per observation",
}


def _curves(result: FitResult) -> dict[str, np.ndarray]:
    """The numeric, non-empty curves of ``result.history``."""
    return {
        key: np.asarray(values, dtype=float)
        for key, values in result.history.items()
        if isinstance(values, Sequence)
        and len(values) > 0
        and all(isinstance(v, int | float) for v in values)
    }


def plot_objective(result: FitResult, path: str | Path | None = None) -> Figure:
    """The objective's history: EM's objective per iteration, SVI's ELBO per step (per epoch in
    minibatches, with the ELBO's terms: a VAE's training curve).

    Every numeric curve in ``result.history`` is drawn in its own panel, the objective first
    (for MAP EM, the objective includes the log prior and the log-likelihood is shown beside
    it; a curve identical to the objective, as EM's log-likelihood under maximum likelihood,
    is not repeated). A long, noisy curve (SVI) also gets a running mean.

    Parameters
    ----------
    result : FitResult
    path : str or Path, optional

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        When the result has no history to plot (e.g. NUTS).
    """
    curves = _curves(result)
    if not curves:
        raise ValueError(f"the {result.method} result has no objective history to plot")
    first = [k for k in ("objective", "elbo") if k in curves]
    order = first + [k for k in curves if k not in first]
    if first:  # a term identical to the objective (EM by maximum likelihood) adds nothing
        main = curves[first[0]]
        order = [
            k
            for k in order
            if k == first[0] or curves[k].shape != main.shape or not np.allclose(curves[k], main)
        ]
    # minibatch fits record one value per epoch
    step = "iteration" if result.method == "em" else (
        "epoch" if "num_epochs" in result.info else "step"
    )
    fig = agg_figure(7.0, 3.2 * len(order))
    axes = fig.subplots(len(order), 1, squeeze=False)[:, 0]
    objective = result.info.get("objective") if result.method == "em" else None
    for ax, key in zip(axes, order, strict=True):
        y = curves[key]
        steps = np.arange(1, len(y) + 1)
        ax.plot(
            steps,
            y,
            marker="o" if len(y) <= 50 else None,
            markersize=3,
            alpha=0.5 if len(y) > 50 else 1.0,
            label=key,
        )
        if len(y) > 50:
            window = max(5, len(y) // 50)
            smooth = np.convolve(y, np.ones(window) / window, mode="valid")
            ax.plot(
                steps[window - 1 :],
                smooth,
                color="black",
                linewidth=1.5,
                label=f"running mean ({window} {step}s)",
            )
            ax.legend(loc="lower right", fontsize="small")
        ax.set_xlabel(step)
        ax.set_ylabel(_TITLES.get(key, key))
        name = _TITLES.get(key, key)
        if key == "objective" and objective is not None:
            name = {
                "ml": "log-likelihood per observation (maximum likelihood)",
                "map": "log joint per observation (MAP: log-likelihood + log prior)",
            }.get(str(objective), name)
        ax.set_title(f"{result.method.upper()}: {name}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    write_png(fig, path)
    return fig


def _trace_rows(idata: az.InferenceData, names: Sequence[str]) -> list[tuple[str, dict]]:
    """One trace row per variable and feature (components share a row, in their colours).

    Features live on different scales, so they get rows of their own.
    """
    rows: list[tuple[str, dict]] = []
    for name in names:
        da = idata.posterior[name]
        if "feature" in da.dims:
            rows.extend((name, {"feature": [str(f)]}) for f in da.coords["feature"].values)
        else:
            rows.append((name, {}))
    return rows


@contextmanager
def _arviz_matplotlib_compat() -> Iterator[None]:
    """Silence the one deprecation ArviZ 0.23's plots trigger in matplotlib >= 3.11.

    ArviZ's kwarg dealiaser passes a dict as ``alias_mapping`` to
    ``matplotlib.cbook.normalize_kwargs``, which matplotlib 3.11 deprecates; the plots are
    unaffected. Only that message is filtered.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Passing a dict or None as alias_mapping", category=Warning
        )
        yield


def _draws_vars(idata: az.InferenceData, var_names: Sequence[str] | None) -> list[str]:
    if "posterior" not in idata.groups() or is_point_estimate(idata):
        raise ValueError("trace plots need posterior draws; EM gives a point estimate")
    wanted = DEFAULT_VARS if var_names is None else tuple(var_names)
    present = [v for v in wanted if v in idata.posterior.data_vars]
    if not present:
        raise ValueError(f"none of {list(wanted)} is in the posterior")
    return present


def _n_entries(idata: az.InferenceData, names: Sequence[str]) -> int:
    post = idata.posterior
    return int(sum(post[v].isel(chain=0, draw=0).size for v in names))


def plot_trace(
    idata: az.InferenceData,
    path: str | Path | None = None,
    *,
    var_names: Sequence[str] | None = None,
) -> Figure:
    """Trace and density of each chain (:func:`arviz.plot_trace`).

    One row per variable and feature; the components of a row are told apart by colour (in
    the canonical order of the relabelling), the chains by line style.

    Parameters
    ----------
    idata : arviz.InferenceData
        From :func:`~ppl_models.diagnostics.to_inference_data` (relabelled components).
    path : str or Path, optional
    var_names : sequence of str, optional
        Default ``weights``, ``locs`` and ``scale`` (those present).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        For a point estimate.
    """
    names = _draws_vars(idata, var_names)
    rows = _trace_rows(idata, names)
    fig = agg_figure(12.0, 2.4 * len(rows))
    axes = fig.subplots(len(rows), 2, squeeze=False)
    with _arviz_matplotlib_compat():
        for i, (name, coords) in enumerate(rows):
            az.plot_trace(
                idata,
                var_names=[name],
                coords=coords,
                axes=axes[i : i + 1],
                compact=True,
                legend=i == 0,
            )
            if coords:
                label = ", ".join(str(v) for values in coords.values() for v in values)
                for ax in axes[i]:
                    ax.set_title(f"{name} ({label})")
    fig.suptitle(f"{idata.posterior.attrs.get('method', '')} posterior draws (relabelled)")
    fig.tight_layout()
    write_png(fig, path)
    return fig


def plot_posterior(
    idata: az.InferenceData,
    path: str | Path | None = None,
    *,
    var_names: Sequence[str] | None = None,
    hdi_prob: float = 0.94,
) -> Figure:
    """Marginal posterior of every entry with its HDI (:func:`arviz.plot_posterior`).

    Parameters
    ----------
    idata : arviz.InferenceData
    path : str or Path, optional
    var_names : sequence of str, optional
        Default ``weights``, ``locs`` and ``scale`` (those present).
    hdi_prob : float

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        For a point estimate.
    """
    names = _draws_vars(idata, var_names)
    n = _n_entries(idata, names)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = agg_figure(3.2 * cols, 2.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    with _arviz_matplotlib_compat(), az.rc_context(rc={"plot.max_subplots": max(n, 40)}):
        az.plot_posterior(
            idata,
            var_names=names,
            ax=axes.ravel()[:n],
            hdi_prob=hdi_prob,
            textsize=8,
            round_to=4,
        )
    fig.tight_layout()
    write_png(fig, path)
    return fig


def save_plots(
    result: FitResult, idata: az.InferenceData | None, out_dir: str | Path
) -> list[Path]:
    """Write every plot that applies as PNG into ``out_dir``.

    ``mixture.png`` for a finite mixture; ``objective.png`` when the result has a history;
    ``trace.png`` and ``posterior.png`` when it has draws.

    Parameters
    ----------
    result : FitResult
    idata : arviz.InferenceData or None
        Its ArviZ data (built without predictive simulation when ``None``).
    out_dir : str or Path
        Created if needed.

    Returns
    -------
    list of Path
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if isinstance(result.model, FiniteMixture):
        plot_mixture(result, out / "mixture.png")
        written.append(out / "mixture.png")
    if _curves(result):
        plot_objective(result, out / "objective.png")
        written.append(out / "objective.png")
    if result.draws is not None:
        if idata is None:
            idata = to_inference_data(result, num_predictive=0, num_prior=0, log_likelihood=False)
        plot_trace(idata, out / "trace.png")
        written.append(out / "trace.png")
        plot_posterior(idata, out / "posterior.png")
        written.append(out / "posterior.png")
    return written
