"""Simulation-based calibration of a three-component mixture, where relabelling matters.

Reference: the exact posterior of a one-dimensional mixture of K = 3 Gaussians with known
unit-free scale :math:`\\sigma`, weights :math:`w \\sim \\mathrm{Dirichlet}(\\mathbf 1)` and
locations :math:`\\mu_k \\sim \\mathcal N(0, \\tau^2)`, computed by brute force: for N = 9
points every one of the :math:`3^9 = 19683` labellings :math:`z` gets its exact posterior weight

.. math:: p(z \\mid x) \\propto \\frac{\\Gamma(K)}{\\Gamma(N + K)} \\prod_k \\Gamma(1 + n_k)
    \\;\\prod_k \\mathcal N\\big(x_{z = k};\\ 0,\\ \\sigma^2 I + \\tau^2 J\\big)

(the Dirichlet-multinomial and each component's Gaussian marginal, PRML eq. 2.115; J the
matrix of ones), and given
a labelling the weights are :math:`\\mathrm{Dirichlet}(\\mathbf 1 + n)` and each location is
Gaussian with precision :math:`1 / \\tau^2 + n_k / \\sigma^2` (PRML eq. 2.141-2.142).

A *stuck* sampler returns these exact draws in one labelling per fit, chosen at random, as an
MCMC chain trapped in one of the :math:`K!` symmetric modes does. SBC is valid for it only
after each draw and the truth are put in a canonical order (a function of the parameters,
Talts et al. 2018): with relabelling the ranks are uniform; without it they are not.
"""

from __future__ import annotations

import functools
import itertools
import math
from functools import partial

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy.special import gammaln, logsumexp

from ppl_models.infer import FitResult
from ppl_models.models import GaussianMixture
from ppl_models.workflows.calibration import simulation_based_calibration

K, N = 3, 9
SIGMA, TAU = 0.5, 2.0


@functools.cache
def one_hot_labellings(k: int, n: int) -> np.ndarray:
    """Every labelling of n points with k labels, one-hot: ``(k^n, n, k)``."""
    return np.eye(k)[np.array(list(itertools.product(range(k), repeat=n)))]


def mixture_model(k: int = K, sigma: float = SIGMA, tau: float = TAU) -> GaussianMixture:
    return GaussianMixture(
        k,
        "diag",
        priors={
            "weights": dist.Dirichlet(torch.ones(k)),
            "locs": dist.Normal(0.0, tau),
            "scale": torch.full((k, 1), sigma),
        },
    )


def log_labelling_posterior(x: np.ndarray, k: int = K, sigma: float = SIGMA,
                            tau: float = TAU) -> np.ndarray:
    """Unnormalised log p(z | x) of every labelling, ``(k^N,)``."""
    n = len(x)
    one_hot = one_hot_labellings(k, n)
    counts = one_hot.sum(1)  # (Z, K)
    sums = one_hot.transpose(0, 2, 1) @ x  # (Z, K)
    squares = one_hot.transpose(0, 2, 1) @ x**2
    log_prior = gammaln(k) - gammaln(n + k) + gammaln(1 + counts).sum(1)
    # log N(x_k; 0, s^2 I + t^2 11^T) by the matrix determinant lemma and Sherman-Morrison
    s2, t2 = sigma**2, tau**2
    log_lik = (
        -0.5 * counts * math.log(2 * math.pi * s2)
        - 0.5 * np.log1p(counts * t2 / s2)
        - 0.5 / s2 * (squares - t2 * sums**2 / (s2 + counts * t2))
    )
    return log_prior + log_lik.sum(1)


def exact_draws(x: np.ndarray, num_draws: int, rng: np.random.Generator, k: int = K,
                sigma: float = SIGMA, tau: float = TAU):
    """Exact posterior draws of (weights, locs): ``(S, k)`` and ``(S, k)``."""
    log_post = log_labelling_posterior(x, k, sigma, tau)
    prob = np.exp(log_post - logsumexp(log_post))
    picked = rng.choice(len(prob), size=num_draws, p=prob)
    one_hot = one_hot_labellings(k, len(x))[picked]
    counts = one_hot.sum(1)
    sums = one_hot.transpose(0, 2, 1) @ x
    weights = np.stack([rng.dirichlet(1.0 + c) for c in counts])
    precision = 1.0 / tau**2 + counts / sigma**2
    locs = sums / sigma**2 / precision + rng.normal(size=counts.shape) / np.sqrt(precision)
    return weights, locs


def stuck_sampler(model, data, *, seed, num_draws=50, stuck=True, sigma=SIGMA,
                  tau=TAU) -> FitResult:
    """Exact draws; with ``stuck``, all in one labelling drawn at random for this fit."""
    rng = np.random.default_rng(seed)
    k = model.n_components
    weights, locs = exact_draws(data.double().numpy()[:, 0], num_draws, rng, k, sigma, tau)
    if stuck:
        mode = rng.permutation(k)
        order = np.argsort(locs, axis=1)[:, mode]  # sorted, then the fit's own labelling
        weights = np.take_along_axis(weights, order, 1)
        locs = np.take_along_axis(locs, order, 1)
    draws = {
        "weights": torch.as_tensor(weights, dtype=torch.float32).reshape(1, num_draws, k),
        "locs": torch.as_tensor(locs, dtype=torch.float32).reshape(1, num_draws, k, 1),
    }
    return FitResult(
        model=model, method="exact", data=data,
        params={name: value[0].mean(0) for name, value in draws.items()},
        draws=draws, history={}, converged=True, n_iter=num_draws, seed=int(seed),
        fit_seconds=0.0,
    )


def test_labelling_posterior_matches_a_direct_sum():
    # The closed form of one labelling's weight against the joint density integrated over
    # the locations by quadrature and the Dirichlet-multinomial written out.
    x = np.array([-1.2, 0.1, 0.3, 2.2, 2.5, -0.9, 0.2, 2.0, 0.4])
    z = np.array([0, 1, 1, 2, 2, 0, 1, 2, 0])
    index = int(np.flatnonzero((one_hot_labellings(K, N).argmax(2) == z).all(1))[0])
    grid = np.linspace(-12, 12, 40001)
    log_lik = 0.0
    for k in range(K):
        xs = x[z == k]
        dens = np.exp(-0.5 * grid**2 / TAU**2) / math.sqrt(2 * math.pi * TAU**2)
        for xi in xs:
            dens = dens * np.exp(-0.5 * (xi - grid) ** 2 / SIGMA**2) / math.sqrt(
                2 * math.pi * SIGMA**2)
        log_lik += math.log(np.trapezoid(dens, grid))
    # p(z) = int prod_n w_{z_n} Dirichlet(w; 1) dw = 2! * prod_k n_k! / (N + 2)!
    counts = np.bincount(z, minlength=K)
    log_pz = math.log(2) + sum(math.lgamma(c + 1) for c in counts) - math.lgamma(N + K)
    assert log_labelling_posterior(x)[index] == pytest.approx(log_pz + log_lik,
                                                                        abs=1e-6)


def _sbc(relabel: bool, stuck: bool = True, replicates: int = 150):
    return simulation_based_calibration(
        mixture_model(), partial(stuck_sampler, stuck=stuck), num_replicates=replicates,
        n_obs=N, n_features=1, relabel=relabel, seed=3, progress=False,
    )


def test_sbc_with_relabelling_passes_a_sampler_stuck_in_one_labelling():
    result = _sbc(relabel=True)
    print(f"\nrelabelled: {result.table.round(3)}")
    assert result.names == ["weights[0]", "weights[1]", "weights[2]",
                            "locs[0, 0]", "locs[1, 0]", "locs[2, 0]"]
    assert result.calibrated(0.01)
    # uniform ranks on {0..50}: mean 0.5 (sd 0.024 over 150), dispersion 1 (sd ~0.05)
    assert np.all(np.abs(result.table["mean_rank"] - 0.5) < 0.1)
    assert np.all(np.abs(result.table["dispersion"] - 1.0) < 0.2)


def test_sbc_without_relabelling_fails_the_stuck_sampler_but_not_an_exact_one():
    # The truth's labels are exchangeable, the stuck fit's are not: the first location of
    # the fit is the smallest, middle or largest at random, the truth's any, so the ranks
    # of the locations pile at both ends.
    unlabelled = _sbc(relabel=False)
    print(f"\nnot relabelled: {unlabelled.table.round(3)}")
    assert unlabelled.p_value < 1e-3 and not unlabelled.calibrated()
    locs = unlabelled.table.loc[["locs[0, 0]", "locs[1, 0]", "locs[2, 0]"]]
    assert np.all(locs["dispersion"] > 1.3)
    # An exact sampler that switches labels as the posterior does is calibrated with or
    # without relabelling (Talts et al.: any function of exact draws has uniform ranks).
    assert _sbc(relabel=False, stuck=False).calibrated(0.01)


def test_sbc_relabels_the_weights_with_their_locations():
    # Two well-separated components and 14 points (2^14 labellings): the weights' posterior
    # (Beta(1 + n_1, 1 + n_2), sd ~0.11) is much narrower than their prior (sd 0.29), so a
    # weight ranked against the other component's truth lands in the tails. Relabelling must
    # carry each component's weight with its location.
    sigma, tau, n = 0.3, 3.0, 14
    result = simulation_based_calibration(
        mixture_model(2, sigma, tau), partial(stuck_sampler, sigma=sigma, tau=tau),
        num_replicates=150, n_obs=n, n_features=1, seed=5, progress=False,
    )
    print(f"\ntwo components: {result.table.round(3)}")
    assert result.calibrated(0.01)
    assert np.all(np.abs(result.table["dispersion"] - 1.0) < 0.2)
