"""Finite mixtures: the enumerated likelihood, priors and argument checking.

Every numerical expectation here is computed independently of the package: densities with
``scipy.stats``, marginal likelihoods by brute-force enumeration of every label assignment,
the stick-breaking density from its change-of-variables formula.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from scipy import integrate, stats
from scipy.special import logsumexp

from ppl_models import GaussianMixture, StudentTMixture, stick_breaking_prior

COV_TYPES = ("full", "diag", "spherical")
DF = 3.5  # a non-default degrees of freedom, so the test also checks that df is used


# --------------------------------------------------------------------------------------------
# independent references


def make_model(kind: str, k: int, cov: str, **kwargs):
    if kind == "gmm":
        return GaussianMixture(k, cov, **kwargs)
    return StudentTMixture(k, cov, df=DF, **kwargs)


def random_corr_chol(rng: np.random.Generator, d: int) -> np.ndarray:
    """Cholesky factor of a random correlation matrix (numpy only)."""
    a = rng.normal(size=(d, d))
    s = a @ a.T + 0.5 * np.eye(d)
    sd = np.sqrt(np.diag(s))
    return np.linalg.cholesky(s / np.outer(sd, sd))


def random_params(rng: np.random.Generator, k: int, d: int, cov: str, batch=()) -> dict:
    """Random site values (numpy), with optional leading batch dimensions."""
    params = {
        "weights": rng.dirichlet(np.ones(k) * 2.0, size=batch)
        if batch
        else rng.dirichlet(np.ones(k) * 2.0),
        "locs": rng.normal(size=(*batch, k, d)),
    }
    if cov == "spherical":
        params["scale"] = rng.uniform(0.5, 2.0, size=(*batch, k))
    else:
        params["scale"] = rng.uniform(0.5, 2.0, size=(*batch, k, d))
    if cov == "full" and d > 1:
        chol = [random_corr_chol(rng, d) for _ in range(int(np.prod(batch, dtype=int)) * k)]
        params["corr_chol"] = np.array(chol).reshape(*batch, k, d, d)
    return params


def covariance(params: dict, k: int, cov: str) -> np.ndarray:
    """Sigma_k = diag(sigma_k) L_k L_k^T diag(sigma_k) for one (unbatched) component."""
    d = params["locs"].shape[-1]
    if cov == "spherical":
        return params["scale"][k] ** 2 * np.eye(d)
    s = np.diag(params["scale"][k])
    if cov == "full" and d > 1:
        corr = params["corr_chol"][k] @ params["corr_chol"][k].T
        return s @ corr @ s
    return s @ s


def scipy_component_logpdf(x: np.ndarray, params: dict, cov: str, kind: str) -> np.ndarray:
    """log f(x_n | theta_k), shape (N, K), with scipy's multivariate densities."""
    k_total = params["locs"].shape[0]
    out = np.empty((x.shape[0], k_total))
    for k in range(k_total):
        sigma = covariance(params, k, cov)
        if kind == "gmm":
            out[:, k] = stats.multivariate_normal(params["locs"][k], sigma).logpdf(x)
        else:
            out[:, k] = stats.multivariate_t(params["locs"][k], sigma, df=DF).logpdf(x)
    return out


def default_log_prior(x: np.ndarray, params: dict, cov: str) -> float:
    """The documented default priors (GaussianMixture docstring), with scipy.

    w ~ Dirichlet(1), mu_kd ~ N(xbar_d, (3 s_d)^2), sigma_kd ~ Gamma(2, rate 2/s_d), and
    L_k ~ LKJCholesky(D, 2), where s_d is the sample standard deviation (ddof=1). For
    ``spherical``, the single sigma_k has the Gamma prior with s = mean_d s_d. For D = 2 the
    LKJ(eta) density of the one correlation r = L_k[1, 0] is Beta(eta, eta) on (r + 1) / 2.
    """
    k = params["locs"].shape[0]
    centre, spread = x.mean(0), x.std(0, ddof=1)
    total = stats.dirichlet.logpdf(params["weights"], np.ones(k))
    total += stats.norm.logpdf(params["locs"], centre, 3 * spread).sum()
    s = spread.mean() if cov == "spherical" else spread
    total += stats.gamma.logpdf(params["scale"], a=2.0, scale=s / 2.0).sum()
    if cov == "full":
        assert x.shape[1] == 2
        r = params["corr_chol"][:, 1, 0]
        total += (stats.beta.logpdf((r + 1) / 2, 2.0, 2.0) - math.log(2.0)).sum()
    return float(total)


def to_torch(params: dict) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(value, dtype=torch.float64) for name, value in params.items()}


# --------------------------------------------------------------------------------------------
# the enumerated marginal likelihood


@pytest.mark.parametrize("kind", ["gmm", "student_t"])
@pytest.mark.parametrize("cov", COV_TYPES)
def test_enumerated_marginal_equals_brute_force_sum(kind: str, cov: str) -> None:
    n, k, d = 4, 3, 2
    rng = np.random.default_rng(11)
    x = rng.normal(size=(n, d)) * np.array([1.0, 2.0]) + np.array([0.5, -1.0])
    params = random_params(rng, k, d, cov)
    params["weights"] = np.array([0.5, 0.3, 0.2])
    model = make_model(kind, k, cov)

    conditioned = poutine.condition(model.model, data=to_torch(params))

    def guide(data):
        pass

    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(
        conditioned, guide, torch.as_tensor(x, dtype=torch.float64)
    )

    # Brute force: sum over all K^N label assignments of the explicit joint.
    log_f = scipy_component_logpdf(x, params, cov, kind)
    log_w = np.log(params["weights"])
    joint = [
        sum(log_w[z[i]] + log_f[i, z[i]] for i in range(n))
        for z in itertools.product(range(k), repeat=n)
    ]
    expected = default_log_prior(x, params, cov) + logsumexp(joint)
    assert -loss == pytest.approx(expected, rel=1e-9, abs=1e-9)


# --------------------------------------------------------------------------------------------
# the pointwise log-likelihood


@pytest.mark.parametrize("kind", ["gmm", "student_t"])
@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("k, d", [(2, 3), (3, 1), (1, 2)])
def test_log_likelihood_matches_scipy(kind: str, cov: str, k: int, d: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, d)) * 1.5
    params = random_params(rng, k, d, cov)
    if k == 1:
        del params["weights"]  # a single component has no weights site
    model = make_model(kind, k, cov)
    got = model.log_likelihood(torch.as_tensor(x), to_torch(params))
    assert got.shape == (7,)
    with_weights = dict(params, weights=params.get("weights", np.ones(1)))
    log_f = scipy_component_logpdf(x, with_weights, cov, kind)
    expected = logsumexp(log_f + np.log(with_weights["weights"]), axis=1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["gmm", "student_t"])
@pytest.mark.parametrize("cov", COV_TYPES)
def test_log_likelihood_with_batch_of_draws(kind: str, cov: str) -> None:
    rng = np.random.default_rng(5)
    k, d, n = 3, 2, 6
    x = rng.normal(size=(n, d))
    batch = (4, 2)
    params = random_params(rng, k, d, cov, batch=batch)
    model = make_model(kind, k, cov)
    got = model.log_likelihood(torch.as_tensor(x), to_torch(params))
    assert got.shape == (*batch, n)
    for idx in itertools.product(*(range(b) for b in batch)):
        one = {name: value[idx] for name, value in params.items()}
        log_f = scipy_component_logpdf(x, one, cov, kind)
        expected = logsumexp(log_f + np.log(one["weights"]), axis=1)
        np.testing.assert_allclose(got[idx].numpy(), expected, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# stick-breaking prior


def _sticks(w: torch.Tensor) -> torch.Tensor:
    """v_k = w_k / (1 - sum_{j<k} w_j), k < K: the inverse of the stick-breaking map."""
    remaining = 1.0 - torch.cat([torch.zeros(1, dtype=w.dtype), w[:-2].cumsum(0)])
    return w[:-1] / remaining


def _weights_from_sticks(v: torch.Tensor) -> torch.Tensor:
    """w_k = v_k prod_{j<k} (1 - v_j) for k < K (the K-1 free coordinates of the simplex)."""
    left = torch.cat([torch.ones(1, dtype=v.dtype), torch.cumprod(1 - v, 0)[:-1]])
    return v * left


def gem_log_density(w: torch.Tensor, alpha: float) -> float:
    """Density of the truncated GEM(alpha) weights w.r.t. Lebesgue measure on w_1..w_{K-1}.

    prod_k Beta(v_k | 1, alpha) / |det dw/dv|, the Jacobian taken numerically.
    """
    v = _sticks(w)
    jac = torch.autograd.functional.jacobian(_weights_from_sticks, v)
    log_det = torch.linalg.slogdet(jac).logabsdet
    log_beta = stats.beta.logpdf(v.numpy(), 1.0, alpha).sum()
    return float(log_beta - log_det)


@pytest.mark.parametrize("alpha, k", [(0.5, 2), (0.7, 4), (2.0, 5)])
def test_stick_breaking_density_matches_gem(alpha: float, k: int) -> None:
    prior = stick_breaking_prior(alpha, k)
    rng = np.random.default_rng(0)
    points = rng.dirichlet(np.ones(k), size=5)
    for point in points:
        w = torch.as_tensor(point, dtype=torch.float64)
        # analytic Jacobian too: triangular, diagonal prod_{j<k} (1 - v_j)
        v = _sticks(w).numpy()
        analytic = stats.beta.logpdf(v, 1.0, alpha).sum() - sum(
            np.log1p(-v[:i]).sum() for i in range(k - 1)
        )
        expected = gem_log_density(w, alpha)
        assert expected == pytest.approx(analytic, rel=1e-10, abs=1e-10)
        got = float(prior.log_prob(w.float()))
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_stick_breaking_density_integrates_to_one() -> None:
    alpha = 2.0
    prior = stick_breaking_prior(alpha, 3)

    def density(w2: float, w1: float) -> float:
        w = torch.tensor([w1, w2, 1.0 - w1 - w2], dtype=torch.float64)
        return math.exp(float(prior.log_prob(w.float())))

    total, _ = integrate.dblquad(
        density, 0.0, 1.0, 0.0, lambda w1: 1.0 - w1, epsabs=1e-7, epsrel=1e-7
    )
    assert total == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.0])
def test_stick_breaking_monte_carlo_means(alpha: float) -> None:
    k, n = 4, 20_000
    prior = stick_breaking_prior(alpha, k)
    w = prior.sample((n,)).double()
    assert w.shape == (n, k)
    np.testing.assert_allclose(w.sum(-1).numpy(), 1.0, atol=1e-5)
    # E[w_1] = E[v_1] = 1/(1+a); E[w_2] = E[v_2] E[1-v_1] = a/(1+a)^2;
    # E[w_K] = E[1 - v]^(K-1) = (a/(1+a))^(K-1).
    expected = {
        0: 1 / (1 + alpha),
        1: alpha / (1 + alpha) ** 2,
        k - 1: (alpha / (1 + alpha)) ** (k - 1),
    }
    for j, mean in expected.items():
        sd = float(w[:, j].std())
        assert float(w[:, j].mean()) == pytest.approx(mean, abs=5 * sd / math.sqrt(n))
    # Var[w_1] = Var Beta(1, a) = a / ((1+a)^2 (2+a))
    var = alpha / ((1 + alpha) ** 2 * (2 + alpha))
    assert float(w[:, 0].var()) == pytest.approx(var, rel=0.05)


@pytest.mark.parametrize(
    "alpha, k, match",
    [
        (0.0, 3, "concentration"),
        (-1.0, 3, "concentration"),
        (math.inf, 3, "concentration"),
        (1.0, 1, "at least 2"),
    ],
)
def test_stick_breaking_bad_arguments(alpha: float, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stick_breaking_prior(alpha, k)


def test_stick_breaking_prior_used_as_weights_prior() -> None:
    k = 3
    prior = stick_breaking_prior(0.5, k)
    model = GaussianMixture(k, "diag", priors={"weights": prior})
    x = torch.randn(10, 2, dtype=torch.float64)
    model.validate(x)
    w = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    trace = poutine.trace(poutine.condition(model.model, data={"weights": w})).get_trace(x)
    trace.compute_log_prob()
    assert float(trace.nodes["weights"]["log_prob_sum"]) == pytest.approx(
        gem_log_density(w, 0.5), rel=1e-4
    )


# --------------------------------------------------------------------------------------------
# priors: validation


@pytest.mark.parametrize(
    "cov, site, prior",
    [
        ("full", "scale", dist.Normal(0.0, 1.0)),
        ("spherical", "scale", dist.Normal(0.0, 1.0)),
        ("diag", "scale", dist.Uniform(-1.0, 1.0)),
        ("full", "weights", dist.Normal(0.0, 1.0)),
        ("full", "weights", dist.Beta(1.0, 1.0)),
        ("full", "corr_chol", dist.Gamma(2.0, 1.0)),
        ("full", "corr_chol", dist.Normal(0.0, 1.0)),
        ("full", "locs", dist.Dirichlet(torch.ones(2))),
        ("full", "locs", dist.Poisson(1.0)),
        ("full", "locs", dist.Bernoulli(0.5)),
    ],
)
def test_wrong_support_refused_naming_the_site(cov: str, site: str, prior) -> None:
    with pytest.raises(ValueError, match=f"'{site}'"):
        GaussianMixture(3, cov, priors={site: prior})
    with pytest.raises(ValueError, match=f"'{site}'"):
        StudentTMixture(3, cov, priors={site: prior})


@pytest.mark.parametrize(
    "site, prior",
    [
        ("scale", dist.HalfNormal(1.0)),
        ("scale", dist.LogNormal(0.0, 1.0)),
        ("scale", dist.Uniform(0.0, 5.0)),
        ("weights", dist.Dirichlet(torch.ones(3))),
        ("locs", dist.Normal(0.0, 10.0)),
        ("locs", dist.StudentT(3.0, 0.0, 1.0)),
        ("corr_chol", dist.LKJCholesky(2, 1.5)),
    ],
)
def test_valid_supports_accepted(site: str, prior) -> None:
    model = GaussianMixture(3, "full", priors={site: prior})
    model.validate(torch.randn(10, 2))
    assert model.priors[site] is prior


@pytest.mark.parametrize(
    "cov, site, prior",
    [
        ("full", "locs", dist.Normal(torch.zeros(3), 1.0)),  # D=3 locations for D=2 data
        ("full", "locs", dist.Normal(torch.zeros(5, 2), 1.0)),  # 5 components, K=3
        ("full", "weights", dist.Dirichlet(torch.ones(4))),  # simplex of size 4 for K=3
        ("full", "scale", dist.Gamma(torch.ones(3), 1.0).to_event(1)),  # event (3,) vs (K, 2)
        ("full", "corr_chol", dist.LKJCholesky(3, 2.0)),  # 3x3 factors for D=2
        ("spherical", "scale", dist.Gamma(torch.ones(3, 2), 1.0)),  # (K, D) for (K,)
        ("diag", "scale", dist.Gamma(torch.ones(2, 2), 1.0)),  # batch (2, 2) for (K=3, 2)
    ],
)
def test_wrong_shapes_refused_at_validate(cov: str, site: str, prior) -> None:
    model = GaussianMixture(3, cov, priors={site: prior})  # the support is fine
    with pytest.raises(ValueError, match=f"'{site}'"):
        model.validate(torch.randn(10, 2))


@pytest.mark.parametrize(
    "cov, site, value",
    [
        ("full", "scale", torch.tensor(-1.0)),
        ("full", "scale", torch.tensor(0.0)),
        ("spherical", "scale", torch.tensor([1.0, -2.0, 1.0])),
        ("full", "scale", torch.tensor(math.inf)),
        ("full", "locs", torch.tensor([0.0, math.nan])),
        ("full", "locs", torch.tensor(math.inf)),
        ("full", "weights", torch.tensor([0.5, 0.6, 0.1])),
        ("full", "weights", torch.tensor([1.2, -0.1, -0.1])),
        ("full", "corr_chol", torch.tensor([[2.0, 0.0], [0.0, 1.0]])),
        ("full", "corr_chol", torch.tensor([[1.0, 0.5], [0.0, 1.0]])),
    ],
)
def test_fixed_value_outside_domain_refused(cov: str, site: str, value) -> None:
    with pytest.raises(ValueError, match=f"fixed value for '{site}'"):
        GaussianMixture(3, cov, priors={site: value})


def test_fixed_value_with_wrong_shape_refused_at_validate() -> None:
    model = GaussianMixture(3, "diag", priors={"scale": torch.ones(4)})
    with pytest.raises(ValueError, match=r"'scale'.*shape"):
        model.validate(torch.randn(10, 2))


def test_unknown_site_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown prior site.*'means'"):
        GaussianMixture(2, priors={"means": dist.Normal(0.0, 1.0)})
    with pytest.raises(ValueError, match=r"unknown prior site.*'df'"):
        StudentTMixture(2, priors={"df": dist.Gamma(2.0, 1.0)})


def test_prior_not_a_distribution_refused() -> None:
    with pytest.raises(ValueError, match=r"'locs'.*must be a Pyro distribution"):
        GaussianMixture(2, priors={"locs": 3.0})


def test_site_the_model_lacks_refused() -> None:
    with pytest.raises(ValueError, match=r"corr_chol.*covariance_type='full'"):
        GaussianMixture(2, "diag", priors={"corr_chol": dist.LKJCholesky(2, 2.0)})
    with pytest.raises(ValueError, match="'weights' prior needs at least 2"):
        GaussianMixture(1, priors={"weights": dist.Dirichlet(torch.ones(2))})
    # full covariance with one feature has no correlation factor
    model = GaussianMixture(2, "full", priors={"corr_chol": dist.LKJCholesky(2, 2.0)})
    with pytest.raises(ValueError, match="corr_chol"):
        model.validate(torch.randn(10, 1))


def test_callable_prior_checked_at_validate() -> None:
    calls = []

    def bad(data):
        calls.append(data)
        return dist.Normal(0.0, 1.0)  # real support, for a positive site

    model = GaussianMixture(2, priors={"scale": bad})  # not called yet: shapes unknown
    assert calls == []
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="'scale'"):
        model.validate(x)
    assert calls and calls[0] is not None

    model = GaussianMixture(2, priors={"locs": lambda data: "not a distribution"})
    with pytest.raises(ValueError, match="callable prior for 'locs'"):
        model.validate(x)

    model = GaussianMixture(2, priors={"locs": lambda data: dist.Normal(torch.zeros(3), 1.0)})
    with pytest.raises(ValueError, match="'locs'"):
        model.validate(x)


@pytest.mark.parametrize("kind", ["gmm", "student_t"])
def test_custom_prior_is_used_in_the_model(kind: str) -> None:
    centre = torch.tensor([5.0, -5.0], dtype=torch.float64)
    priors = {
        "locs": dist.Normal(centre, 0.5),
        "scale": dist.HalfCauchy(torch.tensor(2.0, dtype=torch.float64)),
        "weights": dist.Dirichlet(torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)),
        "corr_chol": dist.LKJCholesky(2, torch.tensor(3.0, dtype=torch.float64)),
    }
    model = make_model(kind, 3, "full", priors=priors)
    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.normal(size=(8, 2)))
    model.validate(x)
    params = random_params(rng, 3, 2, "full")
    trace = poutine.trace(poutine.condition(model.model, data=to_torch(params))).get_trace(x)
    trace.compute_log_prob()
    log_p = {name: float(trace.nodes[name]["log_prob_sum"]) for name in priors}
    assert log_p["locs"] == pytest.approx(
        stats.norm.logpdf(params["locs"], centre.numpy(), 0.5).sum(), rel=1e-10
    )
    assert log_p["scale"] == pytest.approx(
        stats.halfcauchy.logpdf(params["scale"], scale=2.0).sum(), rel=1e-10
    )
    assert log_p["weights"] == pytest.approx(
        stats.dirichlet.logpdf(params["weights"], [2.0, 3.0, 4.0]), rel=1e-10
    )
    r = params["corr_chol"][:, 1, 0]
    assert log_p["corr_chol"] == pytest.approx(
        (stats.beta.logpdf((r + 1) / 2, 3.0, 3.0) - math.log(2)).sum(), rel=1e-10
    )


def test_callable_prior_receives_the_data_and_is_used() -> None:
    model = GaussianMixture(2, "diag", priors={"locs": lambda data: dist.Normal(data.mean(0), 2.0)})
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 7.0]], dtype=torch.float64)
    model.validate(x)
    locs = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    trace = poutine.trace(poutine.condition(model.model, data={"locs": locs})).get_trace(x)
    trace.compute_log_prob()
    expected = stats.norm.logpdf(locs.numpy(), [3.0, 5.0], 2.0).sum()
    assert float(trace.nodes["locs"]["log_prob_sum"]) == pytest.approx(expected, rel=1e-10)


def test_fixed_site_is_not_latent() -> None:
    scale = torch.tensor([[0.5, 1.0], [2.0, 1.5]], dtype=torch.float64)
    model = GaussianMixture(2, "diag", priors={"scale": scale})
    x = torch.randn(6, 2, dtype=torch.float64)
    model.validate(x)
    trace = poutine.trace(model.model).get_trace(x)
    assert "scale" not in trace.nodes
    assert model.global_sites(2) == ["weights", "locs"]
    # and the likelihood uses the fixed value
    params = {"weights": torch.tensor([0.4, 0.6]).double(), "locs": torch.zeros(2, 2).double()}
    got = model.log_likelihood(x, params)
    full = {"weights": params["weights"].numpy(), "locs": np.zeros((2, 2)), "scale": scale.numpy()}
    log_f = scipy_component_logpdf(x.numpy(), full, "diag", "gmm")
    expected = logsumexp(log_f + np.log(full["weights"]), axis=1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# bad model arguments and data


@pytest.mark.parametrize("cls", [GaussianMixture, StudentTMixture])
@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3", None])
def test_bad_n_components(cls, k) -> None:
    with pytest.raises(ValueError, match="n_components"):
        cls(k)


@pytest.mark.parametrize("cls", [GaussianMixture, StudentTMixture])
@pytest.mark.parametrize("cov", ["tied", "Full", "", None])
def test_unknown_covariance_type(cls, cov) -> None:
    with pytest.raises(ValueError, match="covariance_type"):
        cls(2, cov)


@pytest.mark.parametrize("df", [0.0, -1.0, math.nan])
def test_bad_degrees_of_freedom(df: float) -> None:
    with pytest.raises(ValueError, match="df must be positive"):
        StudentTMixture(2, df=df)


@pytest.mark.parametrize("kind", ["gmm", "student_t"])
def test_more_components_than_observations(kind: str) -> None:
    model = make_model(kind, 5, "full")
    with pytest.raises(ValueError, match=r"n_components=5 is larger than the number of .*\(4\)"):
        model.validate(torch.randn(4, 2))
    model.validate(torch.randn(5, 2))  # K = N is allowed


@pytest.mark.parametrize(
    "data, match",
    [
        (torch.tensor([[0.0, 1.0], [math.nan, 2.0], [1.0, 1.0]]), "NaN"),
        (torch.tensor([[0.0, 1.0], [math.inf, 2.0], [1.0, 1.0]]), "infinite"),
        (torch.tensor([[0.0, -math.inf], [1.0, 2.0], [1.0, 1.0]]), "infinite"),
        (torch.randn(10), "2-D"),
        (torch.randn(2, 5, 2), "2-D"),
        (torch.zeros(0, 2), "empty"),
        (torch.zeros(5, 0), "empty"),
        (np.array([["a", "b"], ["c", "d"]]), "numeric"),
    ],
)
@pytest.mark.parametrize("kind", ["gmm", "student_t"])
def test_bad_data_refused(kind: str, data, match: str) -> None:
    model = make_model(kind, 2, "diag")
    with pytest.raises(ValueError, match=match):
        model.validate(data)


def test_validate_returns_the_data() -> None:
    x = np.random.default_rng(0).normal(size=(6, 2))
    out = GaussianMixture(2).validate(x)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), x)


def test_model_simulates_without_data() -> None:
    model = GaussianMixture(2, "full")
    with pytest.raises(ValueError, match="n_obs and n_features"):
        model.model()
    pyro.set_rng_seed(1)
    x = model.model(n_obs=50, n_features=3)
    assert x.shape == (50, 3)
    assert torch.isfinite(x).all()


# --------------------------------------------------------------------------------------------
# labels through infer_discrete


@pytest.mark.parametrize("cov", COV_TYPES)
def test_infer_discrete_labels_match_the_exact_posterior(cov: str) -> None:
    rng = np.random.default_rng(7)
    k, d, n = 3, 2, 12
    params = random_params(rng, k, d, cov)
    x = rng.normal(scale=2.0, size=(n, d))
    log_joint = scipy_component_logpdf(x, params, cov, "gmm") + np.log(params["weights"])
    posterior = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
    model = make_model("gmm", k, cov)
    data = torch.as_tensor(x)
    # MAP labels (temperature 0) are the argmax of the exact posterior.
    labels = model.assignments(data, to_torch(params))
    np.testing.assert_array_equal(labels.numpy(), posterior.argmax(1))
    # Posterior draws (temperature 1): frequencies within 5 binomial standard errors.
    draws = torch.stack([model.assignments(data, to_torch(params), sample=True)
                         for _ in range(200)]).numpy()
    freq = np.stack([(draws == j).mean(0) for j in range(k)], axis=1)
    assert np.all(np.abs(freq - posterior) <= 5 * np.sqrt(posterior * (1 - posterior) / 200) + 1e-9)
