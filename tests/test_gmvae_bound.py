"""The GMVAE's ELBO and importance-weighted bound against a closed-form evidence.

A GMVAE with affine networks (``hidden=()``) and a Gaussian likelihood of fixed scale is a
linear-Gaussian mixture: with :math:`p(y) = 1/K`, :math:`z \\mid y \\sim \\mathcal N(m_y,
\\mathrm{diag}\\, s_y^2)` and :math:`x \\mid z \\sim \\mathcal N(W z + b, \\sigma^2 I)`,

.. math:: \\log p(x) = \\log \\sum_y \\tfrac1K\\, \\mathcal N\\big(x;\\ W m_y + b,\\
    W \\mathrm{diag}(s_y^2) W^\\top + \\sigma^2 I\\big)

exactly (Bishop, PRML eq. 2.115), evaluated here with ``scipy.stats``. When the columns of
:math:`W` are orthogonal and every :math:`s_y` is the same :math:`s`, the exact posterior is
representable by the model's own networks: :math:`p(z \\mid x, y)` is Gaussian with the
diagonal precision :math:`I / s^2 + W^\\top W / \\sigma^2` and a mean affine in
:math:`(x, \\mathrm{onehot}(y))` (PRML eq. 2.116), and :math:`\\log p(y \\mid x)` is affine in
:math:`x` (the marginal covariances of :math:`x` are shared by the labels). With that guide
every importance weight equals :math:`\\log p(x)`, so the ELBO and every K-sample bound are
exact; with any other guide they lie below it and the bound rises to it with K (Burda,
Grosse & Salakhutdinov 2016).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from ppl_models.infer.evaluation import elbo_terms, log_marginal_likelihood
from ppl_models.models import GMVAE
from ppl_models.nn import MIN_SCALE

D, L, K = 3, 2, 3
SIGMA = 0.5  # the likelihood's fixed scale (a float32 buffer: exactly representable)
W = np.array([[0.6, 1.2], [0.8, -0.9], [0.0, 0.0]])  # orthogonal columns: W^T W diagonal
B = np.array([0.3, -0.2, 0.5])
LOCS = np.array([[-2.0, 0.5], [1.5, 1.5], [0.5, -2.0]])


def _inverse_softplus(y: np.ndarray) -> np.ndarray:
    return y + np.log(-np.expm1(-y))


def _assign(param: torch.nn.Parameter, value: np.ndarray) -> None:
    with torch.no_grad():
        param.copy_(torch.as_tensor(value, dtype=param.dtype))


def exact_log_evidence(x: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``(N,)`` log p(x) of the linear-Gaussian mixture, with scipy."""
    parts = []
    for y in range(K):
        cov = W @ np.diag(scales[y] ** 2) @ W.T + SIGMA**2 * np.eye(D)
        parts.append(stats.multivariate_normal(W @ LOCS[y] + B, cov).logpdf(x) - math.log(K))
    return logsumexp(np.stack(parts), axis=0)


def linear_gmvae(scales: np.ndarray, *, conditional: bool = True) -> GMVAE:
    """A float64 GMVAE whose prior and decoder are the linear-Gaussian mixture above; the
    conditional guide is the exact posterior when every row of ``scales`` is the same."""
    model = GMVAE(D, L, K, conditional_encoder=conditional, likelihood="gaussian",
                  obs_scale=SIGMA, hidden=()).double()
    _assign(model.prior.locs, LOCS)
    _assign(model.prior.log_scales, np.log(scales))
    decoder = model.decoder.net[-1]
    _assign(decoder.weight, W)
    _assign(decoder.bias, B)
    if not conditional:
        return model
    s = scales[0]
    precision = 1.0 / s**2 + np.diag(W.T @ W) / SIGMA**2  # (L,) diagonal posterior precision
    post_var = 1.0 / precision
    # loc = post_var * (W^T (x - b) / sigma^2 + m_y / s^2): affine in [x, onehot(y)]
    weight = np.zeros((2 * L, D + K))
    weight[:L, :D] = post_var[:, None] * W.T / SIGMA**2
    weight[:L, D:] = (post_var[:, None] * LOCS.T) / s[:, None] ** 2
    bias = np.zeros(2 * L)
    bias[:L] = -post_var * (W.T @ B) / SIGMA**2
    bias[L:] = _inverse_softplus(np.sqrt(post_var) - MIN_SCALE)
    _assign(model.encoder.head.weight, weight)
    _assign(model.encoder.head.bias, bias)
    # log p(y | x) = (W m_y)^T C^-1 (x - b) - (W m_y)^T C^-1 (W m_y) / 2 + const
    cov = W @ np.diag(s**2) @ W.T + SIGMA**2 * np.eye(D)
    mean_y = LOCS @ W.T  # (K, D)
    coef = np.linalg.solve(cov, mean_y.T).T  # rows C^-1 W m_y
    _assign(model.classifier.head.weight, coef)
    _assign(model.classifier.head.bias, -coef @ B - 0.5 * (coef * mean_y).sum(1))
    return model


def simulate(n: int, scales: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    z = LOCS[y] + scales[y] * rng.normal(size=(n, L))
    return z @ W.T + B + SIGMA * rng.normal(size=(n, D))


SHARED = np.full((K, L), 0.7)
DISTINCT = np.array([[0.5, 0.9], [1.1, 0.6], [0.8, 0.8]])


def test_construction_is_the_exact_posterior_for_the_guide():
    # Independent of the bound: q(y | x) and q(z | x, y) against Bayes' rule by scipy.
    x = simulate(40, SHARED, seed=1)
    model = linear_gmvae(SHARED)
    xt = torch.as_tensor(x)
    with torch.no_grad():
        log_qy = torch.log_softmax(model.classifier(xt), -1).numpy()
    parts = []
    for y in range(K):
        cov = W @ np.diag(SHARED[y] ** 2) @ W.T + SIGMA**2 * np.eye(D)
        parts.append(stats.multivariate_normal(W @ LOCS[y] + B, cov).logpdf(x))
    log_post = np.stack(parts, 1)
    log_post -= logsumexp(log_post, axis=1, keepdims=True)
    np.testing.assert_allclose(log_qy, log_post, atol=1e-9)
    # the labels are far from uniform given x, so a bound that drops q(y|x) is visibly off
    assert np.mean(np.exp(log_post).max(1) > 0.9) > 0.5


def test_exact_guide_makes_every_bound_the_evidence():
    x = simulate(60, SHARED, seed=2)
    exact = exact_log_evidence(x, SHARED)
    model = linear_gmvae(SHARED)
    xt = torch.as_tensor(x)
    for k in (1, 7, 200):
        bound = log_marginal_likelihood(model, xt, k, pointwise=True, particle_batch=50)
        np.testing.assert_allclose(bound.numpy(), exact, atol=1e-8, rtol=0)
    # the enumerated ELBO too: reconstruction - kl_z - kl_y is log p(x) for the exact guide
    assert elbo_terms(model, xt)["elbo"] == pytest.approx(float(exact.mean()), abs=1e-8)
    with torch.no_grad():
        weights = model.log_importance_weights(xt, 5)
    np.testing.assert_allclose(weights.numpy(), np.broadcast_to(exact, (5, 60)), atol=1e-8)


class _WorseEncoder(torch.nn.Module):
    """A worse q(z | x[, y]): the mean moved, the scale widened."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x, context=None):
        loc, scale = self.inner(x, context)
        return loc + 0.3, 1.6 * scale


class _WorseClassifier(torch.nn.Module):
    """A worse q(y | x): the logits flattened towards uniform."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 0.5 * self.inner(x)


def _unconditional_guide(model: GMVAE) -> None:
    """q(z | x): the least-squares code (W^T W)^-1 W^T (x - b), scale 0.8."""
    solve = np.linalg.solve(W.T @ W, W.T)
    weight = np.zeros((2 * L, D))
    weight[:L] = solve
    bias = np.concatenate([-solve @ B, np.full(L, _inverse_softplus(0.8 - MIN_SCALE))])
    _assign(model.encoder.head.weight, weight)
    _assign(model.encoder.head.bias, bias)


@pytest.mark.parametrize("conditional", [True, False])
def test_bounds_rise_to_the_evidence_from_below(conditional):
    # Distinct component scales and an inexact guide: ELBO < L_10 < L_1000 <= log p(x).
    x = simulate(100, DISTINCT, seed=3)
    exact = float(exact_log_evidence(x, DISTINCT).mean())
    xt = torch.as_tensor(x)
    model = linear_gmvae(SHARED if conditional else DISTINCT, conditional=conditional)
    _assign(model.prior.log_scales, np.log(DISTINCT))
    if conditional:
        model.classifier = _WorseClassifier(model.classifier)
    else:
        _unconditional_guide(model)
    model.encoder = _WorseEncoder(model.encoder)
    torch.manual_seed(5)
    with torch.no_grad():  # 20 one-draw ELBOs per point: (20, N)
        terms = [model.elbo_terms(xt) for _ in range(20)]
    per_point = torch.stack([t["reconstruction"] - sum(v for n, v in t.items()
                                                        if n != "reconstruction")
                             for t in terms]).mean(0).numpy()
    one = log_marginal_likelihood(model, xt, 1, pointwise=True, seed=1).numpy()
    bounds = [float(one.mean())] + [log_marginal_likelihood(model, xt, k, particle_batch=500,
                                                            seed=1) for k in (10, 100, 3000)]
    elbo = float(per_point.mean())
    gap = exact - bounds[0]
    print(f"\nexact {exact:.4f}, elbo {elbo:.4f}, bounds {[round(b, 4) for b in bounds]}")
    assert gap > 0.3  # the guide is measurably worse than the posterior
    # The enumerated ELBO (exact in y) is at most the label-marginal L_1 in expectation
    # (Jensen over y; equal for q(z | x)); three standard errors of the difference of the
    # two Monte Carlo means, each a mean over the 100 points.
    se = math.hypot(one.std() / 10, per_point.std() / 10)
    assert elbo <= bounds[0] + 3 * se
    # Expected bounds rise with K (Burda et al., Theorem 1); estimates from K >= 10 on 100
    # points vary by < 0.02 nats here (measured over seeds).
    assert all(later >= earlier - 0.03 for earlier, later in itertools.pairwise(bounds))
    assert bounds[-1] <= exact + 0.02
    # ... and close the gap: with K = 3000 less than 5% of the one-sample gap is left.
    assert exact - bounds[-1] < 0.05 * gap
