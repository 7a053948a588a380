"""Figures drawn off-screen (Agg) and saved as PNG in one step that also closes them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["DPI", "agg_figure", "save_png"]

#: Resolution of every PNG the package writes.
DPI = 100


def agg_figure(width: float, height: float, *, dpi: int = DPI) -> Figure:
    """A figure of ``width`` x ``height`` inches on an Agg canvas, outside pyplot's state
    (no window, no global figure list, safe in threads and on machines without a display)."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike[str], *, dpi: int = DPI) -> Path:
    """Write ``fig`` to ``path`` as PNG (parent folders created, tight bounding box) and close
    it, also when writing fails; return the path.

    A figure made by pyplot is released from pyplot's list too, so that a loop of plots does
    not keep every figure alive.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)
        fig.clear()
    return path
