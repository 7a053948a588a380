"""Dot plot of a guide comparison: one panel per metric, guides on the y axis.

Drawn with the Agg renderer without ``pyplot`` (no figure stays open), as
:mod:`ppl_models.diagnostics.plots` does, on a figure that Jupyter displays when a cell
returns it (:mod:`ppl_models._shared.figures`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ppl_models._shared.figures import agg_figure, write_png
from ppl_models.workflows.compare import METRICS, GuideComparison

__all__ = ["plot_comparison"]

#: How each ``Metric.better`` reads on a panel, and a reference line to draw (or None).
_BETTER: dict[str, tuple[str, float | None]] = {
    "higher": ("better: higher →", None),
    "lower": ("← better: lower", None),
    "one": ("better: closer to 1", 1.0),
}

#: Extra reference lines per metric (dotted), named in the panel's title.
_LINES: dict[str, tuple[tuple[float, ...], str]] = {
    "k_hat": ((0.5, 0.7), "dotted: 0.5 good, 0.7 unreliable"),
}


def _limits(centres: np.ndarray, values: np.ndarray, lines: list[float]):
    """Axis limits that keep the bulk readable, or ``None`` when every value fits.

    The bulk is the guides whose mean lies within 8 robust sds (1.4826 median absolute
    deviations, at least 0.1% of the median's size) of the median guide; the limits span
    their values and the reference lines.
    """
    if centres.size == 0:
        return None
    median = np.median(centres)
    scale = max(1.4826 * np.median(np.abs(centres - median)), 1e-3 * abs(median), 1e-12)
    lo, hi = median - 8 * scale, median + 8 * scale
    if values.min() >= lo and values.max() <= hi:
        return None
    inside = values[(values >= lo) & (values <= hi)]
    lo, hi = min([*inside, *lines, median]), max([*inside, *lines, median])
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
    return lo - pad, hi + pad


def _panel(ax, per_seed, guides: list[str], key: str) -> None:
    """Dots per seed and the mean per guide; values beyond the axis drawn at its edge."""
    metric = METRICS[key]
    hint, line = _BETTER[metric.better]
    lines, legend = _LINES.get(key, ((), ""))
    lines = [*lines, *([line] if line is not None else [])]
    log = key == "fit_seconds"
    by_guide = {
        g: per_seed.loc[per_seed["guide"] == g, key].to_numpy(dtype=float) for g in guides
    }
    kept = {g: v[np.isfinite(v)] for g, v in by_guide.items()}
    centres = np.array([v.mean() for v in kept.values() if v.size])
    every = np.concatenate(list(kept.values()))
    limits = None if log else _limits(centres, every, lines)
    for row, guide in enumerate(guides):
        values = by_guide[guide]
        finite = values[np.isfinite(values)]
        notes = []
        if finite.size:
            points = np.append(finite, finite.mean())
            styles = [("o", "C0", 0.45, 4)] * finite.size + [("D", "C3", 1.0, 6)]
            for value, (marker, color, alpha, size) in zip(points, styles, strict=True):
                if limits is not None and not limits[0] <= value <= limits[1]:
                    edge = limits[0] if value < limits[0] else limits[1]
                    marker = "<" if value < limits[0] else ">"
                    ax.plot(edge, row, marker, color=color, alpha=alpha, ms=size + 1)
                else:
                    ax.plot(value, row, marker, color=color, alpha=alpha, ms=size)
            if limits is not None and not limits[0] <= finite.mean() <= limits[1]:
                notes.append(f"mean {finite.mean():.3g} (off axis)")
        if np.isinf(values).any():
            notes.append(f"{int(np.isinf(values).sum())} seed(s) infinite")
        if notes or not finite.size:
            ax.text(0.5, row + (0.3 if finite.size else 0.0), "; ".join(notes) or "n/a",
                    ha="center", va="center", fontsize=7, color="0.35",
                    transform=ax.get_yaxis_transform())
    if line is not None:
        ax.axvline(line, color="0.4", lw=0.8, ls="--")
    for value in _LINES.get(key, ((), ""))[0]:
        ax.axvline(value, color="0.5", lw=0.8, ls=":")
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5))
        if limits is not None:
            ax.set_xlim(*limits)
    ax.set_yticks(range(len(guides)), guides)
    ax.set_ylim(len(guides) - 0.4, -0.6)
    ax.set_title(f"{metric.label}\n{hint}" + (f" ({legend})" if legend else ""), fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", alpha=0.3)


def plot_comparison(
    comparison: GuideComparison, path: str | Path | None = None, *, columns: int = 3
) -> Figure:
    """A panel per metric: each seed's value (dots) and the mean over seeds (diamond).

    Guides are on the y axis; each panel's title says which way is better. When a few values
    are far from the rest (a guide that failed), the axis keeps to the rest and the outliers
    are drawn as triangles at its edge, their mean written beside them.

    Parameters
    ----------
    comparison : GuideComparison
    path : str or Path, optional
        Where to write the PNG.
    columns : int
        Panels per row.

    Returns
    -------
    Figure
    """
    per_seed = comparison.per_seed
    guides = [str(g) for g in comparison.table.index]
    metrics = [m for m in METRICS if np.isfinite(per_seed[m].to_numpy(dtype=float)).any()]
    rows = max(1, math.ceil(len(metrics) / columns))
    height = 0.9 + 0.4 * len(guides)
    fig = agg_figure(4.6 * columns, height * rows + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, key in zip(axes, metrics, strict=False):
        _panel(ax, per_seed, guides, key)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    seeds = comparison.settings.get("seeds", [])
    fig.suptitle(
        f"Guide comparison ({len(seeds)} seed(s): dots per seed, diamond = mean over seeds; "
        "distances to NUTS after relabelling)",
        fontsize=10,
    )
    fig.tight_layout()
    write_png(fig, path)
    return fig
