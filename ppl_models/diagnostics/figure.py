"""Figures that draw without ``pyplot`` and still show themselves in Jupyter.

Every plot of the collection is a :class:`matplotlib.figure.Figure` on the Agg canvas, made
without ``pyplot``, so that no figure stays registered (and open) in a long session and a
session's interactive backend is left alone. Such a figure is not shown by Jupyter's inline
backend (which flushes only ``pyplot``'s figures), and when a cell returns it IPython shows an
image only if the inline backend happens to be loaded, which needs ``pyplot`` to have been
imported; otherwise the cell prints ``<Figure size ...>``. :class:`DisplayFigure` gives the
figure its own PNG representation (``_repr_png_``, IPython's rich display protocol), so a cell
that returns it shows the picture under any backend.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["DisplayFigure", "new_figure"]


class DisplayFigure(Figure):
    """A :class:`~matplotlib.figure.Figure` that IPython displays as a PNG image."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def new_figure(width: float, height: float, dpi: float = 100) -> DisplayFigure:
    """An empty figure of ``width`` x ``height`` inches on the Agg canvas (no ``pyplot``).

    Parameters
    ----------
    width, height : float
        Inches.
    dpi : float

    Returns
    -------
    DisplayFigure
    """
    fig = DisplayFigure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig
