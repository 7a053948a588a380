"""NUTS on the closed-form potential: chains in processes, and a conjugate posterior."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from pyro.infer import NUTS

from ppl_models.infer import fit_mcmc, mcmc
from ppl_models.models import GaussianMixture


def _data(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x[: n // 2] += 4.0
    return x


def test_parallel_chains_give_the_draws_of_sequential_chains():
    x = _data()
    model = GaussianMixture(2, "diag")
    common = {"num_samples": 15, "warmup_steps": 15, "num_chains": 2, "progress": False}
    sequential = fit_mcmc(model, x, chain_method="sequential", **common)
    parallel = fit_mcmc(model, x, chain_method="parallel", **common)
    assert sequential.info["potential"] == parallel.info["potential"] == "closed_form"
    for site, draws in sequential.draws.items():
        assert draws.shape[:2] == (2, 15)
        torch.testing.assert_close(parallel.draws[site], draws, rtol=0, atol=0)
        # two seeds, two different chains
        assert not torch.equal(draws[0], draws[1])
    assert parallel.info["sample_stats"] == sequential.info["sample_stats"]
    assert parallel.info["step_size"] == sequential.info["step_size"]


def test_closed_form_nuts_matches_a_conjugate_posterior():
    _check_conjugate(potential="auto")


def _check_conjugate(potential):
    r"""One Gaussian with a known scale: the location's posterior is Normal,
    :math:`\mathcal N(m_n, s_n^2)` with :math:`s_n^{-2} = s_0^{-2} + n/\sigma^2` and
    :math:`m_n = s_n^2 (m_0 / s_0^2 + \sum_i x_i / \sigma^2)` per feature."""
    g = torch.Generator().manual_seed(3)
    sigma = 2.0
    x = 1.5 + sigma * torch.randn(12, 2, generator=g, dtype=torch.float64)
    model = GaussianMixture(1, "spherical", priors={"scale": torch.tensor([sigma])})
    result = fit_mcmc(model, x, num_samples=400, warmup_steps=200, num_chains=2,
                      init="prior", progress=False, potential=potential)
    assert result.info["potential"] == ("closed_form" if potential == "auto" else potential)
    m0, s0 = x.mean(0), 3.0 * x.std(0)  # the default location prior
    post_var = 1.0 / (1.0 / s0**2 + x.shape[0] / sigma**2)
    post_mean = post_var * (m0 / s0**2 + x.sum(0) / sigma**2)
    draws = result.draws["locs"].reshape(-1, 2)
    # 800 draws with an effective size of at least ~200: the mean within 4 Monte Carlo SEs
    se = post_var.sqrt() / math.sqrt(200)
    assert ((draws.mean(0) - post_mean).abs() < 4 * se).all()
    torch.testing.assert_close(draws.std(0), post_var.sqrt(), rtol=0.15, atol=0)


def test_bad_choices_are_refused_in_one_line():
    x = _data()
    with pytest.raises(ValueError, match="potential must be one of"):
        fit_mcmc(GaussianMixture(2), x, potential="fast")
    with pytest.raises(ValueError, match="chain_method must be one of"):
        fit_mcmc(GaussianMixture(2), x, chain_method="vectorised")
    with pytest.raises(ValueError, match="use potential='trace'"):
        fit_mcmc(GaussianMixture(2), x, potential="closed_form", jit_compile=True)


def test_auto_potential_stays_eager_for_short_runs_and_compiled_needs_a_closed_form():
    x = _data()
    short = fit_mcmc(GaussianMixture(2, "diag"), x, num_samples=5, warmup_steps=5, num_chains=1,
                     progress=False)
    assert short.info["potential"] == "closed_form" and short.info["compile_seconds"] == 0.0
    half_normal = GaussianMixture(2, "diag", priors={"scale": dist.HalfNormal(2.0)})
    with pytest.raises(ValueError, match="use potential='closed_form'"):
        fit_mcmc(half_normal, x, potential="compiled", num_samples=5, warmup_steps=5)
    generic = fit_mcmc(half_normal, x, potential="closed_form", num_samples=5, warmup_steps=5,
                       num_chains=1, progress=False)
    assert generic.info["potential"] == "closed_form"


@pytest.mark.slow
def test_compiled_chains_in_processes_give_the_draws_of_sequential_ones_and_the_posterior():
    """Compiled once before forking: the workers reuse it; and the conjugate posterior."""
    x = _data()
    model = GaussianMixture(2, "full")
    common = {"num_samples": 15, "warmup_steps": 15, "num_chains": 2, "progress": False,
              "potential": "compiled"}
    sequential = fit_mcmc(model, x, chain_method="sequential", **common)
    parallel = fit_mcmc(model, x, chain_method="parallel", **common)
    assert sequential.info["potential"] == parallel.info["potential"] == "compiled"
    for site, draws in sequential.draws.items():
        torch.testing.assert_close(parallel.draws[site], draws, rtol=0, atol=0)
    _check_conjugate(potential="compiled")


def test_direct_leapfrog_gives_the_draws_of_pyros_autograd_leapfrog(monkeypatch):
    """The leapfrog step that takes the closed form's gradient without autograd is Pyro's own
    step: the same draws and statistics as Pyro's ``_build_basetree`` on the same potential."""
    x = _data()
    common = {"num_samples": 20, "warmup_steps": 20, "num_chains": 1, "progress": False,
              "potential": "closed_form"}
    direct = fit_mcmc(GaussianMixture(2, "full"), x, **common)
    monkeypatch.setattr(mcmc._RecordingNUTS, "_build_basetree",
                        lambda self, *args: NUTS._build_basetree(self, *args))
    pyros = fit_mcmc(GaussianMixture(2, "full"), x, **common)
    for site, draws in direct.draws.items():
        torch.testing.assert_close(pyros.draws[site], draws, rtol=0, atol=0)
    assert pyros.info["sample_stats"] == direct.info["sample_stats"]


def test_auto_falls_back_to_the_uncompiled_closed_form_when_compiling_fails(monkeypatch):
    def broken(self, unconstrained):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(mcmc, "COMPILE_MIN_STEPS", 1)
    monkeypatch.setattr(mcmc.NUTSPotential, "warm_up", broken)
    x = _data()
    common = {"num_samples": 5, "warmup_steps": 5, "num_chains": 1, "progress": False}
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        fit = fit_mcmc(GaussianMixture(2, "diag"), x, **common)
    assert fit.info["potential"] == "closed_form"
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        fit_mcmc(GaussianMixture(2, "diag"), x, potential="compiled", **common)
