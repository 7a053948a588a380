"""Figures show themselves as PNG images in IPython, whatever matplotlib backend is loaded."""

from __future__ import annotations

import pytest
import torch
from IPython.core.formatters import DisplayFormatter
from matplotlib.figure import Figure

from ppl_models import GaussianMixture, load
from ppl_models._shared.figures import agg_figure as new_figure
from ppl_models.diagnostics import plot_mixture, plot_objective
from ppl_models.infer import fit_em
from ppl_models.workflows import plot_selection, select_components

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rich_display(obj) -> dict:
    """What IPython's display hook would send for ``obj`` (a fresh formatter: no inline
    backend registered, as in a kernel where pyplot was never imported)."""
    data, _ = DisplayFormatter().format(obj)
    return data


def test_a_plain_figure_has_no_image_without_the_inline_backend():
    # the failure the notebooks showed: a bare Figure is only its repr
    assert "image/png" not in rich_display(Figure())


@pytest.fixture(scope="module")
def em_fit():
    x, columns = load("faithful", dtype=torch.float64)
    return fit_em(GaussianMixture(2), x, columns=columns, progress=False)


@pytest.mark.parametrize("plot", [plot_mixture, plot_objective], ids=lambda f: f.__name__)
def test_plots_display_as_png(plot, em_fit):
    data = rich_display(plot(em_fit))
    assert data["text/plain"].startswith("<DisplayFigure size")
    assert data["image/png"].startswith(PNG_MAGIC)


def test_new_figure_and_selection_plot_display_as_png():
    assert rich_display(new_figure(2, 2))["image/png"].startswith(PNG_MAGIC)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 2, generator=gen, dtype=torch.float64)
    table = select_components(x, ks=[1, 2], criteria=("bic",), progress=False)
    assert rich_display(plot_selection(table))["image/png"].startswith(PNG_MAGIC)


def test_training_curve_of_a_minibatch_fit_is_per_epoch():
    from ppl_models.infer import fit_svi
    from ppl_models.models import VAE

    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((40, 16), 0.3))
    result = fit_svi(VAE(16, 2, hidden=(8,)), x, batch_size=20, num_epochs=3, progress=False)
    fig = plot_objective(result)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)
    assert len(labels) == len([k for k, v in result.history.items() if len(v)]) >= 3
    assert len(fig.axes[0].lines[0].get_xdata()) == 3
    assert rich_display(fig)["image/png"].startswith(PNG_MAGIC)
