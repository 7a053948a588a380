"""Figures drawn off-screen (Agg, no ``pyplot``) that show themselves in Jupyter, and their PNGs.

Every plot of the collection is a :class:`DisplayFigure` on the Agg canvas, made without
``pyplot``, so that no figure stays registered (and open) in a long session and a session's
interactive backend is left alone. Such a figure is not shown by Jupyter's inline backend
(which flushes only ``pyplot``'s figures), and a plain ``Figure`` returned by a cell prints
``<Figure size ...>`` unless the inline backend happens to be loaded. :class:`DisplayFigure`
gives the figure its own PNG representation (``_repr_png_``, IPython's rich display protocol),
so a cell that returns it shows the picture under any backend.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["DPI", "DisplayFigure", "agg_figure", "save_png", "write_png"]

#: Resolution of every PNG the package writes.
DPI = 100


class DisplayFigure(Figure):
    """A :class:`~matplotlib.figure.Figure` that IPython displays as a PNG image."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def agg_figure(width: float, height: float, *, dpi: int = DPI) -> DisplayFigure:
    """A figure of ``width`` x ``height`` inches on an Agg canvas, outside pyplot's state
    (no window, no global figure list, safe in threads and on machines without a display)."""
    fig = DisplayFigure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def write_png(
    fig: Figure, path: str | os.PathLike[str] | None, *, dpi: int = DPI
) -> Path | None:
    """Write ``fig`` to ``path`` as PNG (parent folders created, tight bounding box) and keep
    it open, for a plot function that also returns its figure; ``path=None`` writes nothing."""
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
    return path


def save_png(fig: Figure, path: str | os.PathLike[str], *, dpi: int = DPI) -> Path:
    """Write ``fig`` to ``path`` as PNG (as :func:`write_png`) and close it, also when
    writing fails; return the path.

    A figure made by pyplot is released from pyplot's list too, so that a loop of plots does
    not keep every figure alive.
    """
    try:
        written = write_png(fig, path, dpi=dpi)
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)
        fig.clear()
    return written
