"""EM: agreement with scikit-learn, monotonicity, generic M-step, MAP, restarts, failures.

References are independent of the package: scikit-learn's ``GaussianMixture`` run from the
same starting point, log-likelihoods and priors evaluated with ``scipy.stats``, and a direct
``scipy.optimize.minimize`` of the marginal log-likelihood in a parametrisation written here.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import optimize, stats
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_models import GaussianMixture, StudentTMixture, fit_em, load

COV_TYPES = ("full", "diag", "spherical")
SLACK = 1e-9  # relative round-off slack when checking that an objective never decreases


# --------------------------------------------------------------------------------------------
# helpers (numpy / scipy only)


def assert_monotone(values, slack: float = SLACK) -> None:
    values = list(values)
    assert len(values) >= 2
    assert all(math.isfinite(v) for v in values)
    for i, (a, b) in enumerate(itertools.pairwise(values)):
        assert b >= a - slack * max(1.0, abs(a)), f"objective fell at iteration {i + 1}: {a} -> {b}"


def site_covariances(params: dict, cov: str) -> np.ndarray:
    """(K, D, D) covariance matrices from site values, with numpy."""
    locs = np.asarray(params["locs"])
    k, d = locs.shape
    scale = np.asarray(params["scale"])
    if cov == "spherical":
        scale = np.repeat(scale[:, None], d, axis=1)
    out = np.empty((k, d, d))
    for j in range(k):
        s = np.diag(scale[j])
        corr = np.eye(d)
        if cov == "full" and d > 1:
            chol = np.asarray(params["corr_chol"][j])
            corr = chol @ chol.T
        out[j] = s @ corr @ s
    return out


def scipy_log_likelihood(x: np.ndarray, params: dict, cov: str, df: float | None = None) -> float:
    """sum_n log sum_k w_k f(x_n | theta_k), f Gaussian (df None) or multivariate t."""
    sigma = site_covariances(params, cov)
    k = sigma.shape[0]
    weights = np.asarray(params["weights"]) if "weights" in params else np.ones(1)
    log_f = np.empty((x.shape[0], k))
    for j in range(k):
        loc = np.asarray(params["locs"][j])
        if df is None:
            log_f[:, j] = stats.multivariate_normal(loc, sigma[j]).logpdf(x)
        else:
            log_f[:, j] = stats.multivariate_t(loc, sigma[j], df=df).logpdf(x)
    return float(logsumexp(log_f + np.log(weights), axis=1).sum())


def as_numpy(params: dict) -> dict:
    return {name: value.detach().numpy() for name, value in params.items()}


def sklearn_init(x: np.ndarray, k: int, cov: str, seed: int):
    """A starting point: K distinct data points as means, equal weights, the data's spread."""
    rng = np.random.default_rng(seed)
    means = x[rng.choice(len(x), k, replace=False)]
    weights = np.full(k, 1.0 / k)
    var = x.var(0)
    if cov == "full":
        covariances = np.repeat(np.cov(x.T, bias=True)[None], k, axis=0) * 0.5
        precisions = np.linalg.inv(covariances)
    elif cov == "diag":
        covariances = np.tile(var * 0.5, (k, 1))
        precisions = 1.0 / covariances
    else:
        covariances = np.full(k, var.mean() * 0.5)
        precisions = 1.0 / covariances
    return weights, means, covariances, precisions


def faithful() -> np.ndarray:
    x, _ = load("faithful", dtype=torch.float64)
    return x.numpy()


def simulated_3d(n: int = 300, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 4.0, 4.0]])
    z = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    out = np.empty((n, 3))
    for j in range(3):
        a = rng.normal(size=(3, 3)) * 0.6
        cov = a @ a.T + 0.3 * np.eye(3)
        idx = z == j
        out[idx] = rng.multivariate_normal(means[j], cov, size=idx.sum())
    return out


DATASETS = {"faithful": (faithful, 3), "simulated_3d": (simulated_3d, 3)}


# --------------------------------------------------------------------------------------------
# agreement with scikit-learn


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("cov", COV_TYPES)
def test_em_matches_sklearn_from_the_same_start(dataset: str, cov: str) -> None:
    make, k = DATASETS[dataset]
    x = make()
    weights, means, covariances, precisions = sklearn_init(x, k, cov, seed=3)
    sk = SkGaussianMixture(
        k,
        covariance_type=cov,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=500,
    ).fit(x)
    assert sk.converged_

    model = GaussianMixture(k, cov)
    init = {"weights": weights, "locs": means, "covariances": covariances}
    result = fit_em(model, torch.as_tensor(x), init=init, tol=1e-3, reg_covar=1e-6, max_iter=500,
                    reg_covar_mode="absolute")
    assert result.info["m_step"] == "closed_form"
    assert result.converged
    assert result.n_iter == sk.n_iter_
    state = model.em_state(result.params)
    np.testing.assert_allclose(state["weights"].numpy(), sk.weights_, atol=1e-5)
    np.testing.assert_allclose(state["locs"].numpy(), sk.means_, atol=1e-5)
    np.testing.assert_allclose(state["covariances"].numpy(), sk.covariances_, atol=1e-5)
    assert result.info["mean_log_likelihood"] == pytest.approx(sk.score(x), abs=1e-8)
    # and the reported value is the log-likelihood of the returned parameters (scipy)
    assert result.info["log_likelihood"] == pytest.approx(
        scipy_log_likelihood(x, as_numpy(result.params), cov), rel=1e-10
    )


@pytest.mark.parametrize("cov", COV_TYPES)
def test_em_is_translation_equivariant(cov: str) -> None:
    # Old Faithful moved by 1e6: E[x^2] - E[x]^2 style formulas lose ~12 digits there
    # (scikit-learn's own diag/spherical M-step does), so the reference is scikit-learn on the
    # unshifted data, shifted back: EM commutes with translations.
    shift = 1e6
    x = faithful()
    weights, means, covariances, precisions = sklearn_init(x, 3, cov, seed=3)
    sk = SkGaussianMixture(
        3,
        covariance_type=cov,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
        tol=1e-3,
        max_iter=500,
    ).fit(x)
    model = GaussianMixture(3, cov)
    init = {"weights": weights, "locs": means + shift, "covariances": covariances}
    result = fit_em(model, torch.as_tensor(x + shift), init=init, tol=1e-3, max_iter=500,
                    reg_covar_mode="absolute")
    assert result.n_iter == sk.n_iter_
    state = model.em_state(result.params)
    np.testing.assert_allclose(state["weights"].numpy(), sk.weights_, atol=1e-6)
    np.testing.assert_allclose(state["locs"].numpy() - shift, sk.means_, atol=1e-5)
    np.testing.assert_allclose(state["covariances"].numpy(), sk.covariances_, atol=1e-5)
    assert result.info["mean_log_likelihood"] == pytest.approx(sk.score(x), abs=1e-8)


@pytest.mark.parametrize(
    "dataset, k, cov",
    [
        ("faithful", 2, "full"),
        ("faithful", 3, "diag"),
        ("faithful", 4, "spherical"),
        ("faithful", 1, "full"),
        ("simulated_3d", 3, "full"),
        ("simulated_3d", 2, "diag"),
        ("simulated_3d", 3, "spherical"),
    ],
)
def test_bic_aic_match_sklearn(dataset: str, k: int, cov: str) -> None:
    x = DATASETS[dataset][0]()
    weights, means, covariances, precisions = sklearn_init(x, k, cov, seed=1)
    sk = SkGaussianMixture(
        k,
        covariance_type=cov,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
        tol=1e-6,
        max_iter=1000,
    ).fit(x)
    model = GaussianMixture(k, cov)
    init = {"weights": weights, "locs": means, "covariances": covariances}
    result = fit_em(model, torch.as_tensor(x), init=init, tol=1e-6, max_iter=1000,
                    reg_covar_mode="absolute")
    assert result.info["bic"] == pytest.approx(sk.bic(x), rel=1e-8)
    assert result.info["aic"] == pytest.approx(sk.aic(x), rel=1e-8)
    assert result.info["n_parameters"] == sk._n_parameters()


# --------------------------------------------------------------------------------------------
# monotonicity of exact EM (property test)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(20, 80),
    d=st.integers(1, 3),
    k=st.integers(1, 4),
    cov=st.sampled_from(COV_TYPES),
    init=st.sampled_from(["kmeans++", "random"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_exact_em_log_likelihood_never_decreases(n, d, k, cov, init, seed) -> None:
    # Monotonicity (Dempster, Laird & Rubin 1977) is a theorem for the *exact* E- and M-steps
    # of maximum likelihood. reg_covar > 0 makes the M-step a different update (the covariance
    # is no longer the maximiser of Q), so reg_covar=0. Without regularisation a component can
    # collapse onto fewer than D+1 points; the likelihood is then unbounded and the update
    # numerically singular (Cholesky failure, variance computed as E[x^2] - mean^2 by
    # cancellation), so the theorem no longer describes what floating point computes: such
    # draws are discarded with `assume`, as are draws whose final covariances are
    # ill-conditioned relative to the data. Everything else must rise at every iteration up to
    # a relative round-off slack of 1e-9.
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(k, d))
    labels = rng.integers(0, k, size=n)
    x = centres[labels] + rng.normal(size=(n, d)) * rng.uniform(0.3, 1.5, size=(k, 1))[labels]
    model = GaussianMixture(k, cov)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fit_em(
                model,
                torch.as_tensor(x),
                init=init,
                reg_covar=0.0,
                tol=0.0,
                max_iter=30,
                seed=seed % 1000,
            )
        except (torch.linalg.LinAlgError, RuntimeError, ValueError):
            assume(False)
    messages = [str(w.message) for w in caught]
    # tol=0 never converges: that warning must be there, and nothing about a decrease.
    assert any("did not converge" in m for m in messages)
    history = result.history["log_likelihood"]
    assume(all(math.isfinite(v) for v in history))
    sigma = model.em_state(result.params)["covariances"].numpy()
    if cov == "full":
        smallest = np.linalg.eigvalsh(sigma)[:, 0]
    elif cov == "diag":
        smallest = sigma.min(1)
    else:
        smallest = sigma
    assume(bool((smallest > 1e-6 * x.var(0).min()).all()))
    assert len(history) == 30
    assert_monotone(history)
    assert not any("decreased" in m for m in messages)
    assert result.info["monotone_violations"] == 0


# --------------------------------------------------------------------------------------------
# generic M-step


def two_clusters(n: int = 100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.random(n) < 0.4
    a = rng.multivariate_normal([-2.0, 0.0], [[1.0, 0.5], [0.5, 0.8]], size=n)
    b = rng.multivariate_normal([2.0, 1.5], [[0.6, -0.2], [-0.2, 1.2]], size=n)
    return np.where(z[:, None], a, b)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_generic_em_agrees_with_closed_form(cov: str) -> None:
    x = two_clusters()
    weights, means, covariances, _ = sklearn_init(x, 2, cov, seed=0)
    init = {"weights": weights, "locs": means, "covariances": covariances}
    model = GaussianMixture(2, cov)
    kwargs = dict(init=init, reg_covar=0.0, tol=1e-8, max_iter=300)
    closed = fit_em(model, torch.as_tensor(x), m_step="closed_form", **kwargs)
    generic = fit_em(model, torch.as_tensor(x), m_step="generic", **kwargs)
    assert closed.info["m_step"] == "closed_form"
    assert generic.info["m_step"] == "generic"
    assert generic.info["objective"] == "ml"
    assert generic.converged and closed.converged
    assert generic.info["mean_log_likelihood"] == pytest.approx(
        closed.info["mean_log_likelihood"], abs=1e-6
    )
    for name, value in closed.params.items():
        np.testing.assert_allclose(generic.params[name].numpy(), value.numpy(), atol=1e-4)
    # both reach what scipy says the returned parameters' log-likelihood is
    assert generic.info["log_likelihood"] == pytest.approx(
        scipy_log_likelihood(x, as_numpy(generic.params), cov), rel=1e-10
    )
    assert_monotone(generic.history["objective"])
    assert_monotone(closed.history["objective"])


@pytest.mark.parametrize("cov", COV_TYPES)
def test_one_generic_m_step_equals_the_closed_form_m_step(cov: str) -> None:
    # One E-step from the same start and one M-step: the generic M-step maximises Q
    # numerically, whose maximiser is the closed-form update (reg_covar=0).
    x = two_clusters(60)
    weights, means, covariances, _ = sklearn_init(x, 2, cov, seed=0)
    init = {"weights": weights, "locs": means, "covariances": covariances}
    model = GaussianMixture(2, cov)
    fits = {}
    for m_step in ("closed_form", "generic"):
        with pytest.warns(UserWarning, match="did not converge"):
            fits[m_step] = fit_em(
                model, torch.as_tensor(x), init=init, reg_covar=0.0, max_iter=1, m_step=m_step
            )
    for name, value in fits["closed_form"].params.items():
        np.testing.assert_allclose(fits["generic"].params[name].numpy(), value.numpy(), atol=1e-5)
    # ... and both equal the update written out here: responsibilities from scipy densities,
    # then N_k / N, weighted means and weighted covariances (diagonal / mean of the diagonal).
    log_f = np.column_stack(
        [stats.multivariate_normal(means[j], _dense(covariances[j], 2)).logpdf(x) for j in range(2)]
    )
    log_joint = log_f + np.log(weights)
    resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
    nk = resp.sum(0)
    mu = resp.T @ x / nk[:, None]
    sigma = np.stack([(resp[:, j, None] * (x - mu[j])).T @ (x - mu[j]) / nk[j] for j in range(2)])
    got = as_numpy(fits["generic"].params)
    np.testing.assert_allclose(got["weights"], nk / len(x), atol=1e-6)
    np.testing.assert_allclose(got["locs"], mu, atol=1e-5)
    got_sigma = site_covariances(got, cov)
    if cov == "diag":
        sigma = np.stack([np.diag(np.diag(s)) for s in sigma])
    elif cov == "spherical":
        sigma = np.stack([np.eye(2) * np.diag(s).mean() for s in sigma])
    np.testing.assert_allclose(got_sigma, sigma, atol=1e-5)


def _dense(cov_k, d: int) -> np.ndarray:
    """A compact (diag / spherical) or full covariance as a (D, D) matrix."""
    cov_k = np.asarray(cov_k)
    if cov_k.ndim == 2:
        return cov_k
    return np.diag(np.broadcast_to(cov_k, (d,)))


# --------------------------------------------------------------------------------------------
# Student-t mixture: generic EM reaches the maximum likelihood


T_DF = 4.0
T_MEANS = np.array([[-3.0, 0.0], [3.0, 1.0]])


def simulate_t_mixture(n: int = 150, seed: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.random(n) < 0.4
    shapes = [np.array([[1.0, 0.3], [0.3, 0.5]]), np.array([[0.7, -0.2], [-0.2, 1.2]])]
    draws = [
        stats.multivariate_t(T_MEANS[j], shapes[j], df=T_DF).rvs(size=n, random_state=rng)
        for j in range(2)
    ]
    return np.where(z[:, None], draws[0], draws[1])


class TParam:
    """Unconstrained parametrisation of a full-covariance t mixture, written for the test.

    theta = [logits of w_1..w_{K-1} (w_K's logit is 0), locations, and for each component the
    log-diagonal and the strict lower triangle of the Cholesky factor A of Sigma = A A^T].
    """

    def __init__(self, k: int, d: int) -> None:
        self.k, self.d = k, d
        self.tril = np.tril_indices(d, -1)

    def unpack(self, theta: np.ndarray):
        k, d = self.k, self.d
        logits = np.append(theta[: k - 1], 0.0)
        weights = np.exp(logits - logsumexp(logits))
        pos = k - 1
        locs = theta[pos : pos + k * d].reshape(k, d)
        pos += k * d
        sigmas = []
        n_off = len(self.tril[0])
        for _ in range(k):
            a = np.diag(np.exp(theta[pos : pos + d]))
            pos += d
            a[self.tril] = theta[pos : pos + n_off]
            pos += n_off
            sigmas.append(a @ a.T)
        return weights, locs, sigmas

    def pack(self, weights, locs, sigmas) -> np.ndarray:
        parts = [np.log(weights[:-1]) - np.log(weights[-1]), np.ravel(locs)]
        for sigma in sigmas:
            a = np.linalg.cholesky(sigma)
            parts += [np.log(np.diag(a)), a[self.tril]]
        return np.concatenate(parts)

    def negative_log_likelihood(self, theta: np.ndarray, x: np.ndarray) -> float:
        weights, locs, sigmas = self.unpack(theta)
        log_f = np.column_stack(
            [stats.multivariate_t(locs[j], sigmas[j], df=T_DF).logpdf(x) for j in range(self.k)]
        )
        return -float(logsumexp(log_f + np.log(weights), axis=1).sum())


@pytest.fixture(scope="module")
def t_fit():
    x = simulate_t_mixture()
    model = StudentTMixture(2, "full", df=T_DF)
    rng = np.random.default_rng(1)
    init = {
        "weights": np.array([0.5, 0.5]),
        "locs": x[rng.choice(len(x), 2, replace=False)],
        "covariances": np.repeat(np.cov(x.T)[None], 2, axis=0),
    }
    result = fit_em(model, torch.as_tensor(x), init=init, tol=1e-9, max_iter=300)
    return x, init, result


def test_student_t_generic_em_reaches_the_maximum(t_fit) -> None:
    x, init, result = t_fit
    n = x.shape[0]
    assert result.info["m_step"] == "generic"
    assert result.info["objective"] == "ml"
    assert result.converged
    assert_monotone(result.history["objective"])
    params = as_numpy(result.params)
    em_ll = scipy_log_likelihood(x, params, "full", df=T_DF)
    assert result.info["log_likelihood"] == pytest.approx(em_ll, rel=1e-10)

    param = TParam(2, 2)
    starts = {
        "em": param.pack(params["weights"], params["locs"], site_covariances(params, "full")),
        "init": param.pack(init["weights"], init["locs"], init["covariances"]),
    }
    for where, theta0 in starts.items():
        best = optimize.minimize(
            param.negative_log_likelihood,
            theta0,
            args=(x,),
            method="L-BFGS-B",
            options={"maxiter": 2000, "ftol": 1e-14, "gtol": 1e-8},
        )
        improvement = (-best.fun - em_ll) / n
        assert improvement < 1e-5, f"scipy from the {where} start improved EM by {improvement}"
        if where == "em":
            # started at EM's answer, the optimiser finds nowhere better to go
            weights, locs, _ = param.unpack(best.x)
            np.testing.assert_allclose(locs, params["locs"], atol=1e-2)
            np.testing.assert_allclose(weights, params["weights"], atol=1e-2)


def test_student_t_em_recovers_the_means(t_fit) -> None:
    _, _, result = t_fit
    locs = result.params["locs"].numpy()
    order = np.argsort(locs[:, 0])
    np.testing.assert_allclose(locs[order], T_MEANS, atol=0.35)
    weights = result.params["weights"].numpy()[order]
    assert weights[0] == pytest.approx(0.4, abs=0.1)


# --------------------------------------------------------------------------------------------
# MAP


def scipy_log_prior_diag(x: np.ndarray, params: dict, centre: np.ndarray, sd: float) -> float:
    """Normal(centre, sd) on locs (the user's) + the documented defaults for weights/scale."""
    k = params["locs"].shape[0]
    spread = x.std(0, ddof=1)
    return float(
        stats.dirichlet.logpdf(params["weights"], np.ones(k))
        + stats.norm.logpdf(params["locs"], centre, sd).sum()
        + stats.gamma.logpdf(params["scale"], a=2.0, scale=spread / 2.0).sum()
    )


def test_map_objective_and_pull_of_the_prior() -> None:
    x_t, _ = load("faithful", dtype=torch.float64, standardize=True)
    x = x_t.numpy()
    n = x.shape[0]
    centre, sd = np.array([0.5, -0.5]), 0.2
    prior = dist.Normal(torch.tensor(centre), sd)
    model = GaussianMixture(2, "diag", priors={"locs": prior})
    weights, means, covariances, _ = sklearn_init(x, 2, "diag", seed=0)
    init = {"weights": weights, "locs": means, "covariances": covariances}
    fit_map = fit_em(model, x_t, init=init, tol=1e-7, max_iter=300)
    fit_ml = fit_em(model, x_t, init=init, tol=1e-7, max_iter=300, objective="ml")
    assert fit_map.info["objective"] == "map"
    assert fit_map.info["m_step"] == "generic"
    assert fit_ml.info["objective"] == "ml"
    assert_monotone(fit_map.history["objective"])

    p_map, p_ml = as_numpy(fit_map.params), as_numpy(fit_ml.params)
    # the reported final objective is log p(x | theta) + log p(theta), per observation
    map_value = scipy_log_likelihood(x, p_map, "diag") + scipy_log_prior_diag(x, p_map, centre, sd)
    assert fit_map.info["restart_objectives"][0] == pytest.approx(map_value / n, rel=1e-9)
    # each estimate is the better one for its own objective
    ml_value = scipy_log_likelihood(x, p_ml, "diag") + scipy_log_prior_diag(x, p_ml, centre, sd)
    assert map_value > ml_value
    assert scipy_log_likelihood(x, p_ml, "diag") > scipy_log_likelihood(x, p_map, "diag")
    # the strong prior pulls every location towards its centre
    for k in range(2):
        d_map = np.linalg.norm(p_map["locs"][k] - centre)
        d_ml = np.linalg.norm(p_ml["locs"][k] - centre)
        assert d_map < d_ml - 1e-3, (k, d_map, d_ml)


# --------------------------------------------------------------------------------------------
# restarts


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_restarts_keep_the_best(init: str) -> None:
    x, _ = load("faithful", dtype=torch.float64, standardize=True)
    model = GaussianMixture(4, "full")
    result = fit_em(model, x, n_init=5, init=init, max_iter=500, seed=2)
    objectives = result.info["restart_objectives"]
    assert len(objectives) == 5
    assert len({round(v, 6) for v in objectives}) > 1, "restarts should reach different optima"
    assert result.info["mean_log_likelihood"] == pytest.approx(max(objectives), rel=1e-12)
    own = scipy_log_likelihood(x.numpy(), as_numpy(result.params), "full") / x.shape[0]
    assert own == pytest.approx(max(objectives), rel=1e-10)


def test_same_seed_same_result_different_seed_different_start() -> None:
    x, _ = load("faithful", dtype=torch.float64, standardize=True)
    model = GaussianMixture(3, "diag")
    a = fit_em(model, x, seed=5)
    b = fit_em(model, x, seed=5)
    for name in a.params:
        torch.testing.assert_close(a.params[name], b.params[name], rtol=0, atol=0)
    assert a.history == b.history


# --------------------------------------------------------------------------------------------
# degenerate components


def data_with_repeated_point(n_cluster: int = 40) -> torch.Tensor:
    """Five copies of (0, -10) and two Gaussian clusters far from it."""
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            np.tile([0.0, -10.0], (5, 1)),
            rng.normal(size=(n_cluster, 2)) + np.array([5.0, 5.0]),
            rng.normal(size=(n_cluster, 2)) + np.array([-5.0, 5.0]),
        ]
    )
    return torch.as_tensor(x)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_collapsed_component_on_repeated_points_is_reported(cov: str) -> None:
    x = data_with_repeated_point()
    with pytest.warns(UserWarning, match="collapsed") as record:
        result = fit_em(GaussianMixture(3, cov), x, reg_covar=1e-6, reg_covar_mode="absolute")
    assert any("collapsed" in str(w.message) for w in record)
    assert any("collapsed" in note for note in result.info["warnings"])
    for value in result.params.values():
        assert torch.isfinite(value).all()
    assert math.isfinite(result.info["log_likelihood"])
    # the collapsed component sits on the repeated point and its variance is held at reg_covar
    sigma = GaussianMixture(3, cov).em_state(result.params)["covariances"]
    point = torch.tensor([0.0, -10.0], dtype=torch.float64)
    at_zero = int((result.params["locs"] - point).norm(dim=1).argmin())
    torch.testing.assert_close(result.params["locs"][at_zero], point)
    if cov == "full":
        smallest = torch.linalg.eigvalsh(sigma[at_zero])[0]
    elif cov == "diag":
        smallest = sigma[at_zero].min()
    else:
        smallest = sigma[at_zero]
    assert float(smallest) == pytest.approx(1e-6, rel=1e-3)


def test_init_on_a_single_point_collapses_without_nan() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(60, 2)), [[30.0, -30.0]]])  # one far outlier
    init = {
        "weights": np.array([0.5, 0.49, 0.01]),
        "locs": np.array([[-1.0, 0.0], [1.0, 0.0], [30.0, -30.0]]),
        "covariances": np.array([np.eye(2), np.eye(2), np.eye(2) * 1e-3]),
    }
    with pytest.warns(UserWarning, match="collapsed"):
        result = fit_em(GaussianMixture(3, "full"), torch.as_tensor(x), init=init)
    assert any("collapsed" in note for note in result.info["warnings"])
    for value in result.params.values():
        assert torch.isfinite(value).all()
    assert result.params["weights"][2] == pytest.approx(1 / 61, rel=1e-6)


def _generic_fit_on_repeated_points(kind: str):
    x = data_with_repeated_point(n_cluster=15)
    model = GaussianMixture(3, "diag") if kind == "gmm" else StudentTMixture(3, "diag")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit_em(model, x, m_step="generic", max_iter=5, reg_covar=1e-6)
    return result, [str(w.message) for w in caught]


@pytest.mark.parametrize("kind", ["gmm", "student_t"])
def test_generic_em_survives_a_degenerate_component(kind: str) -> None:
    # The generic M-step (the only one for the Student-t mixture) faces the same unbounded
    # likelihood when a component sits on repeated points: it must not crash (Pyro's
    # validation is on, as by default) nor return NaN/inf.
    result, _ = _generic_fit_on_repeated_points(kind)
    for value in result.params.values():
        assert torch.isfinite(value).all()
    assert math.isfinite(result.info["log_likelihood"])
    assert result.params["scale"].min() > 0


@pytest.mark.parametrize("kind", ["gmm", "student_t"])
def test_generic_em_reports_collapsed_component(kind: str) -> None:
    # ... and, as the closed-form path does, it must say that a component collapsed.
    result, messages = _generic_fit_on_repeated_points(kind)
    assert any("collapsed" in m for m in messages), messages
    assert any("collapsed" in note for note in result.info["warnings"])


# --------------------------------------------------------------------------------------------
# errors


@pytest.fixture()
def small_data() -> torch.Tensor:
    return torch.as_tensor(two_clusters(40))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_init": 0}, "n_init"),
        ({"n_init": -2}, "n_init"),
        ({"n_init": 1.5}, "n_init"),
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"tol": -1e-3}, "tol"),
        ({"tol": math.nan}, "tol"),
        ({"reg_covar": -1e-6}, "reg_covar"),
        ({"reg_covar": math.nan}, "reg_covar"),
        ({"objective": "mle"}, "objective"),
        ({"objective": "MAP"}, "objective"),
        ({"m_step": "exact"}, "m_step"),
        ({"m_step": "closedform"}, "m_step"),
        ({"init": "k-means"}, "init"),
    ],
)
def test_bad_arguments_refused(small_data, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        fit_em(GaussianMixture(2, "diag"), small_data, **kwargs)


def test_closed_form_refused_for_student_t(small_data) -> None:
    with pytest.raises(ValueError, match="closed-form"):
        fit_em(StudentTMixture(2, "diag"), small_data, m_step="closed_form")


def test_closed_form_refused_for_map_and_fixed_sites(small_data) -> None:
    model = GaussianMixture(2, "diag", priors={"locs": dist.Normal(0.0, 1.0)})
    with pytest.raises(ValueError, match=r"closed-form.*MAP"):
        fit_em(model, small_data, m_step="closed_form")
    model = GaussianMixture(2, "diag", priors={"scale": torch.ones(2, 2)})
    with pytest.raises(ValueError, match=r"closed-form.*\['scale'\] are fixed"):
        fit_em(model, small_data, m_step="closed_form")


def test_model_validation_applies_in_fit_em() -> None:
    with pytest.raises(ValueError, match="larger than the number of observations"):
        fit_em(GaussianMixture(5), torch.randn(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        fit_em(GaussianMixture(2), torch.tensor([[0.0, 1.0], [math.nan, 0.0], [1.0, 1.0]]))


@pytest.mark.parametrize(
    "kind, m_step, init",
    [
        ("student_t", "auto", {"weights": [0.5, 0.5], "locs": [[0.0, 0.0], [1.0, 1.0]]}),
        ("gmm", "generic", {"weights": [0.5, 0.5], "locs": [[0.0, 0.0], [1.0, 1.0]]}),
        ("gmm", "closed_form", {"weights": [0.5, 0.5], "locs": [[0.0, 0.0], [1.0, 1.0]]}),
        (
            "gmm",
            "closed_form",
            {"locs": [[0.0, 0.0], [1.0, 1.0]], "scale": [[1.0, 1.0], [1.0, 1.0]]},
        ),
    ],
)
def test_init_missing_a_site_refused(small_data, kind, m_step, init) -> None:
    model = GaussianMixture(2, "diag") if kind == "gmm" else StudentTMixture(2, "diag")
    with pytest.raises(ValueError, match="missing"):
        fit_em(model, small_data, init=init, m_step=m_step)


@pytest.mark.parametrize("offset, spread, refused", [(0.0, 1e-6, False), (1e4, 1e-10, True)])
def test_resolution_check_per_feature_beside_a_wide_feature(offset, spread, refused) -> None:
    # Feature 0 near 1e8 (spread 1e3) has the widest float64 spacing of all; whether feature 1
    # is resolved is decided by its own spacing (NumPy's np.spacing), not by feature 0's.
    from ppl_models.infer.regularisation import check_resolution

    rng = np.random.default_rng(0)
    x = np.stack([1e8 + 1e3 * rng.normal(size=500), offset + spread * rng.normal(size=500)], 1)
    expected = [
        np.spacing(np.abs(x[:, j]).max()) > 1e-3 * x[:, j].std() for j in range(2)
    ]
    assert expected == [False, refused]
    if refused:
        with pytest.raises(ValueError, match=r"^feature 1: .*spaced"):
            check_resolution(torch.as_tensor(x))
    else:
        check_resolution(torch.as_tensor(x))
