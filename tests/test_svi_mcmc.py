"""SVI and NUTS against an analytic posterior, and their drivers' contracts.

Conjugate special case: one spherical component with a known scale sigma (fixed by passing a
tensor as its prior) and a Normal(m0, s0^2) prior on its location. The posterior of each
coordinate of the location is Normal with precision 1/s0^2 + N/sigma^2 and mean
(m0/s0^2 + sum_n x_nd / sigma^2) / precision (Gelman et al., BDA3, §2.5).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch

from ppl_models.data import load
from ppl_models.infer import fit_mcmc, fit_svi
from ppl_models.models import GaussianMixture

SIGMA, M0, S0 = 1.5, 0.5, 2.0


@pytest.fixture(scope="module")
def conjugate():
    gen = torch.Generator().manual_seed(1)
    x = 1.0 + SIGMA * torch.randn(25, 2, generator=gen)
    model = GaussianMixture(
        1,
        "spherical",
        priors={"scale": torch.tensor([SIGMA]), "locs": dist.Normal(M0, S0)},
    )
    precision = 1 / S0**2 + x.shape[0] / SIGMA**2
    mean = (M0 / S0**2 + x.sum(0) / SIGMA**2) / precision
    return model, x, mean, torch.full_like(mean, precision**-0.5)


def test_nuts_recovers_the_analytic_posterior(conjugate):
    model, x, mean, sd = conjugate
    result = fit_mcmc(model, x, num_samples=400, warmup_steps=200, num_chains=2, init="prior")
    draws = result.draws["locs"].reshape(-1, 2)
    assert result.draws["locs"].shape == (2, 400, 1, 2)
    # Monte-Carlo error of the mean with ~800 correlated draws is well below 0.15 sd.
    assert torch.allclose(draws.mean(0), mean, atol=float(0.15 * sd[0]))
    assert torch.allclose(draws.std(0), sd, rtol=0.12)
    assert result.converged and result.info["max_r_hat"] < 1.05
    assert "scale" not in result.draws  # fixed, so not a latent variable


def test_mean_field_guide_recovers_the_analytic_posterior(conjugate):
    # The posterior factorises over coordinates, so the mean-field family contains it.
    model, x, mean, sd = conjugate
    result = fit_svi(
        model, x, guide="mean_field", num_steps=1500, lr=0.05, lr_decay=0.004,
        init="prior", num_draws=4000,
    )
    draws = result.draws["locs"].reshape(-1, 2)
    assert torch.allclose(draws.mean(0), mean, atol=float(0.08 * sd[0]))
    assert torch.allclose(draws.std(0), sd, rtol=0.1)
    assert torch.allclose(result.params["locs"][0], mean, atol=float(0.08 * sd[0]))


def test_svi_elbo_is_below_the_exact_evidence(conjugate):
    # log p(x) in closed form: x_d ~ N(m0 1, sigma^2 I + s0^2 11^T) independently per feature.
    model, x, _, _ = conjugate
    n = x.shape[0]
    cov = SIGMA**2 * torch.eye(n) + S0**2 * torch.ones(n, n)
    evidence = sum(
        float(dist.MultivariateNormal(torch.full((n,), M0), cov).log_prob(x[:, d]))
        for d in range(2)
    )
    result = fit_svi(model, x, guide="mean_field", num_steps=1500, lr=0.02, init="prior")
    elbo_total = result.info["elbo"] * n
    assert elbo_total <= evidence + 0.5  # a bound, up to Monte-Carlo noise of the estimate
    assert elbo_total > evidence - 1.0  # the family contains the posterior: nearly tight


@pytest.mark.parametrize("guide", ["map", "mean_field", "full_rank", "flow"])
def test_svi_on_old_faithful_finds_the_two_clusters(guide):
    # The flow starts at the same point as the others (Pyro's AutoIAFNormal alone would start
    # near 0 in the unconstrained space, ~70 minutes from the waiting times).
    # load() reads float64; Pyro's autoregressive flow networks are float32 (the guide does not
    # follow the data's dtype yet), so the flow runs on float32 data.
    x, columns = load("faithful", dtype=torch.float32 if guide == "flow" else torch.float64)
    result = fit_svi(GaussianMixture(2), x, guide=guide, num_steps=300, lr=0.05, num_draws=50,
                     columns=columns)
    locs = result.params["locs"]
    order = locs[:, 0].argsort()
    # The two eruption types of Old Faithful: ~2.0 min / 54 min and ~4.3 min / 80 min.
    expected = torch.tensor([[2.04, 4.29], [54.5, 80.0]], dtype=locs.dtype)
    assert torch.allclose(locs[order, 0], expected[0], atol=0.15)
    assert torch.allclose(locs[order, 1], expected[1], atol=2.0)
    assert len(result.history["elbo"]) == 300 and all(map(math.isfinite, result.history["elbo"]))
    if guide == "map":
        assert result.draws is None and result.info["point_estimate"]
    else:
        assert result.draws["weights"].shape == (1, 50, 2)
        total = result.draws["weights"].sum(-1)
        assert torch.allclose(total, torch.ones(1, 50, dtype=total.dtype))


def test_svi_early_stop_on_a_plateau():
    x, _ = load("faithful")
    result = fit_svi(GaussianMixture(2), x, guide="map", num_steps=5000, lr=0.05,
                     early_stop=True, window=50, min_delta=1e-3)
    assert result.converged
    assert result.n_iter < 5000


def test_unknown_guide_is_refused_with_the_known_kinds():
    x, _ = load("faithful")
    with pytest.raises(ValueError, match=r"unknown guide kind 'meanfield'.*mean_field"):
        fit_svi(GaussianMixture(2), x, guide="meanfield", num_steps=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 0}, "num_steps must be a positive integer"),
        ({"num_draws": -1}, "num_draws must be a non-negative integer"),
        ({"init": "kmeans"}, "init must be one of"),
    ],
)
def test_svi_argument_errors(kwargs, message):
    x, _ = load("faithful")
    with pytest.raises(ValueError, match=message):
        fit_svi(GaussianMixture(2), x, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "num_samples must be a positive integer"),
        ({"num_chains": 1.5}, "num_chains must be a positive integer"),
        ({"warmup_steps": -1}, "warmup_steps must be a positive integer"),
    ],
)
def test_mcmc_argument_errors(kwargs, message):
    x, _ = load("faithful")
    with pytest.raises(ValueError, match=message):
        fit_mcmc(GaussianMixture(2), x, **kwargs)


def test_marginal_model_has_the_enumerated_models_density():
    # NUTS samples the collapsed model; it must have the enumerated model's log density.
    import pyro
    from pyro import poutine
    from pyro.infer import TraceEnum_ELBO

    x, _ = load("faithful")
    x = x[:30].double()
    model = GaussianMixture(3, "full")
    trace = poutine.trace(poutine.block(model.model, hide=["assignment"])).get_trace(x)
    values = {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and name != "components"
    }
    collapsed = poutine.trace(poutine.condition(model.marginal_model, data=values)).get_trace(x)
    enumerated = -TraceEnum_ELBO(max_plate_nesting=1).loss(
        poutine.condition(model.model, data=values), lambda data: None, x
    )
    assert math.isclose(float(collapsed.log_prob_sum()), enumerated, rel_tol=1e-9)
    pyro.clear_param_store()
