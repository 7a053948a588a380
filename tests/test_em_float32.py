"""EM in float32 against scikit-learn in float64, iteration for iteration, from one start.

On well-conditioned data (three separated 2-D or 3-D clusters, unit-scale spreads, N = 600)
float32 carries about 7 significant digits, so after a handful of EM iterations from the same
start our float32 fit and scikit-learn's float64 one agree in every parameter and in the
per-iteration log-likelihood to a float32 tolerance (1e-4 relative). Both run a fixed number
of iterations (``tol=0``), so the comparison does not hinge on where each stops; the
convergence warnings this provokes are silenced, so a failure here is a wrong number, never a
warning turned into an error.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_models import GaussianMixture, fit_em

ITERATIONS = 8


def clusters(d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 1.0, -1.0], [1.0, 5.0, 2.0]])[:, :d]
    parts = []
    for j, n in enumerate((250, 200, 150)):
        a = rng.normal(size=(d, d)) * 0.5 + np.eye(d) * 0.7
        parts.append(centres[j] + rng.normal(size=(n, d)) @ a.T)
    return np.concatenate(parts)


def start(x: np.ndarray, cov: str, seed: int = 1):
    """A deliberately rough start: three data points, equal weights, a shared covariance."""
    rng = np.random.default_rng(seed)
    means = x[rng.choice(len(x), 3, replace=False)]
    full = np.repeat(np.cov(x.T, bias=True)[None], 3, 0) * 0.6
    if cov == "full":
        covariances, precisions = full, np.linalg.inv(full)
    else:
        covariances = np.diagonal(full, axis1=1, axis2=2).copy()
        precisions = 1.0 / covariances
    return np.full(3, 1 / 3), means, covariances, precisions


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("cov", ["full", "diag"])
def test_float32_em_follows_scikit_learn_iteration_by_iteration(cov: str, d: int) -> None:
    x = clusters(d)
    weights, means, covariances, precisions = start(x, cov)
    sk = SkGaussianMixture(3, covariance_type=cov, weights_init=weights, means_init=means,
                           precisions_init=precisions, tol=0.0, max_iter=ITERATIONS,
                           reg_covar=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(x)
        result = fit_em(
            GaussianMixture(3, cov), torch.as_tensor(x),
            init={"weights": weights, "locs": means, "covariances": covariances},
            dtype=torch.float32, tol=0.0, max_iter=ITERATIONS, reg_covar=1e-6,
            reg_covar_mode="absolute", progress=False,
        )
    assert result.data.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in result.params.values())
    assert result.n_iter == sk.n_iter_ == ITERATIONS
    state = GaussianMixture(3, cov).em_state(result.params)
    np.testing.assert_allclose(state["weights"].numpy(), sk.weights_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state["locs"].numpy(), sk.means_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state["covariances"].numpy(), sk.covariances_, rtol=1e-4,
                               atol=1e-4)
    # The mean log-likelihood of every iteration (scikit-learn's lower bounds: the E-step's
    # value before each M-step) and at the returned parameters.
    np.testing.assert_allclose(result.history["log_likelihood"], sk.lower_bounds_, rtol=1e-5)
    assert result.info["mean_log_likelihood"] == pytest.approx(sk.score(x), rel=1e-5)
    # EM moved far from the rough start, so agreement is not agreement with the start
    assert sk.lower_bounds_[-1] - sk.lower_bounds_[0] > 0.1
