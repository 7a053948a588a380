"""Prior, prior predictive and per-feature predictive groups of ``to_inference_data``."""

from __future__ import annotations

import numpy as np
import pytest

from ppl_models.data import load
from ppl_models.diagnostics import to_inference_data
from ppl_models.infer import fit_em
from ppl_models.models import GaussianMixture


@pytest.fixture(scope="module")
def idata():
    x, names = load("faithful", standardize=True)
    result = fit_em(GaussianMixture(3), x, progress=False, columns=names)
    return to_inference_data(result, num_predictive=5, num_prior=400, seed=1)


def test_prior_predictive_has_the_data_shape(idata):
    observed = idata.observed_data["x"]
    assert idata.prior_predictive["x"].shape == (1, 400, *observed.shape)
    for name in ("eruptions", "waiting"):
        assert idata.prior_predictive[f"x_{name}"].shape == (1, 400, observed.shape[0])


def test_prior_draws_follow_the_priors(idata):
    # Dirichlet(1, 1, 1): each weight has mean 1/3 and variance (1/3)(2/3)/4 = 1/18.
    weights = idata.prior["weights"].values.reshape(-1, 3)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-9)
    assert np.all(np.abs(weights.mean(0) - 1 / 3) < 4 * np.sqrt(1 / 18 / 400))
    # Locations ~ N(mean_d, (3 s_d)^2) on standardized data: mean 0, sd 3.
    locs = idata.prior["locs"].values.reshape(-1)
    assert abs(locs.mean()) < 4 * 3 / np.sqrt(locs.size) and abs(locs.std() - 3) < 0.3
    # The prior predictive data are spread like the prior: far wider than the data.
    assert idata.prior_predictive["x"].values.std() > 2 * idata.observed_data["x"].values.std()


def test_per_feature_variables_are_the_columns(idata):
    for j, name in enumerate(("eruptions", "waiting")):
        np.testing.assert_array_equal(idata.posterior_predictive[f"x_{name}"].values,
                                      idata.posterior_predictive["x"].values[..., j])
        np.testing.assert_array_equal(idata.observed_data[f"x_{name}"].values,
                                      idata.observed_data["x"].values[:, j])


def test_plot_ppc_draws_one_panel_per_feature(idata):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ppl_models._arviz import az
    from ppl_models.diagnostics.plots import _arviz_matplotlib_compat

    with _arviz_matplotlib_compat():
        axes = az.plot_ppc(idata, var_names=["x_eruptions", "x_waiting"], num_pp_samples=3)
    assert np.asarray(axes).size == 2
    plt.close("all")
