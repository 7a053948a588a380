"""Simulation-based calibration against exact posteriors, and the mean-field failure it finds.

Reference model: one bivariate Gaussian component with a fixed covariance
:math:`\\Sigma = [[1, \\rho], [\\rho, 1]]`, :math:`\\rho = 0.95`, and a Normal(0, I) prior on its
location. The posterior of the location is Gaussian with precision
:math:`\\Lambda = I + N \\Sigma^{-1}` and mean :math:`\\Lambda^{-1} \\Sigma^{-1} \\sum_n x_n`
(Bishop, PRML eq. 2.116-2.117), strongly correlated. The mean-field Gaussian closest in
KL(q || p) keeps the exact mean and has marginal variances :math:`1 / \\Lambda_{ii}` (Bishop,
PRML §10.1.2), smaller than the exact :math:`(\\Lambda^{-1})_{ii}`.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from ppl_models.infer import FitResult, fit_em, fit_mcmc, fit_svi
from ppl_models.models import GaussianMixture
from ppl_models.workflows.calibration import (
    SBCResult,
    bin_probabilities,
    chi_square_uniformity,
    ecdf_band,
    ecdf_gamma,
    null_ecdf_gamma,
    simulation_based_calibration,
)

RHO = 0.95
CORR = torch.tensor([[1.0, RHO], [RHO, 1.0]])


def correlated_model() -> GaussianMixture:
    return GaussianMixture(
        1,
        "full",
        priors={
            "locs": dist.Normal(0.0, 1.0),
            "scale": torch.ones(2),
            "corr_chol": torch.linalg.cholesky(CORR),
        },
    )


def analytic_posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the location's posterior (float64)."""
    x = x.double()
    sigma_inv = torch.linalg.inv(CORR.double())
    precision = torch.eye(2, dtype=torch.float64) + x.shape[0] * sigma_inv
    cov = torch.linalg.inv(precision)
    return cov @ sigma_inv @ x.sum(0), cov


def exact_sampler(model, data, *, seed, num_draws=63, sd_factor=1.0, shift=0.0) -> FitResult:
    """A 'fit' drawing from the analytic posterior (optionally too narrow or shifted)."""
    mean, cov = analytic_posterior(data)
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(num_draws, 2, generator=gen, dtype=torch.float64)
    draws = mean + shift * cov.diagonal().sqrt() + sd_factor * noise @ torch.linalg.cholesky(cov).T
    return FitResult(
        model=model,
        method="exact",
        data=data,
        params={"locs": mean.reshape(1, 2).float()},
        draws={"locs": draws.reshape(1, num_draws, 1, 2).float()},
        history={},
        converged=True,
        n_iter=num_draws,
        seed=int(seed),
        fit_seconds=0.0,
    )


# --------------------------------------------------------------------------- the statistics
def test_bin_probabilities_count_rank_values():
    # Brute force: which bin each of the L + 1 rank values falls in.
    for ell, bins in [(9, 5), (10, 4), (99, 20), (6, 7)]:
        counts = np.zeros(bins)
        for r in range(ell + 1):
            counts[int(np.floor(r * bins / (ell + 1)))] += 1
        np.testing.assert_allclose(bin_probabilities(ell, bins), counts / (ell + 1))


def test_chi_square_matches_the_textbook_formula():
    rng = np.random.default_rng(3)
    ranks = rng.integers(0, 20, size=(60, 3))  # L = 19, 5 bins of 4 values
    chi2, p = chi_square_uniformity(ranks, 19, 5)
    for j in range(3):
        observed = np.array([np.sum(ranks[:, j] // 4 == b) for b in range(5)])
        expected = 60 / 5
        statistic = np.sum((observed - expected) ** 2 / expected)
        assert chi2[j] == pytest.approx(statistic)
        assert p[j] == pytest.approx(stats.chi2.sf(statistic, df=4))


def test_ecdf_test_has_its_size_and_band_its_coverage():
    r, ell = 50, 30
    null = null_ecdf_gamma(r, ell, 2000, seed=0)
    rng = np.random.default_rng(123)  # a stream independent of the null simulation
    uniform = rng.integers(0, ell + 1, size=(600, r))
    gamma = ecdf_gamma(uniform, ell)
    p_values = (1 + (null[None, :] <= gamma[:, None]).sum(1)) / (null.size + 1)
    # Size: under uniformity P(p <= 0.05) = 0.05 (binomial sd over 600 samples: 0.009).
    assert abs(np.mean(p_values <= 0.05) - 0.05) < 0.03
    # Simultaneous coverage of the 90% band (Säilynoja et al., 2022): whole ECDFs inside.
    _, low, high = ecdf_band(null, r, ell, 0.9)
    ecdf = np.stack([np.searchsorted(np.sort(u), np.arange(ell), side="right") for u in uniform])
    inside = np.all((ecdf / r >= low - 1e-12) & (ecdf / r <= high + 1e-12), axis=1)
    assert abs(inside.mean() - 0.9) < 0.04
    # Power: ranks piled at both ends are far outside.
    piled = np.concatenate([np.zeros(r // 2, int), np.full(r - r // 2, ell)])
    assert ecdf_gamma(piled[None, :], ell)[0] < null.min()


# --------------------------------------------------------------------------- SBC, exact sampler
@pytest.fixture(scope="module")
def exact_runs() -> dict[str, SBCResult]:
    model = correlated_model()
    run = partial(simulation_based_calibration, model, num_replicates=200, n_obs=8, n_features=2,
                  seed=1, progress=False)
    return {
        "exact": run(exact_sampler),
        "narrow": run(partial(exact_sampler, sd_factor=0.5)),
        "shifted": run(partial(exact_sampler, shift=0.75)),
    }


def test_sbc_passes_an_exact_posterior_sampler(exact_runs):
    result = exact_runs["exact"]
    assert result.ranks.shape == (200, 2) and result.names == ["locs[0, 0]", "locs[0, 1]"]
    assert result.num_ranks == 63 and result.ranks.min() >= 0 and result.ranks.max() <= 63
    assert result.dropped == []
    assert result.p_value > 0.05 and result.calibrated()
    # Uniform ranks on {0..63}: mean 0.5 (sd 0.02 over 200), dispersion 1 (sd ~0.045).
    assert np.all(np.abs(result.table["mean_rank"] - 0.5) < 0.07)
    assert np.all(np.abs(result.table["dispersion"] - 1.0) < 0.15)


def test_sbc_flags_too_narrow_and_biased_samplers(exact_runs):
    narrow, shifted = exact_runs["narrow"], exact_runs["shifted"]
    assert narrow.p_value < 1e-3 and not narrow.calibrated()
    assert np.all(narrow.table["dispersion"] > 1.2)  # ranks pile at both ends
    assert shifted.p_value < 1e-3
    # Draws shifted up by 0.75 sd: the truth lies below most draws, ranks are low.
    assert np.all(shifted.table["mean_rank"] < 0.4)


def test_sbc_plot_writes_a_png(exact_runs, tmp_path):
    fig = exact_runs["narrow"].plot(tmp_path / "sbc.png")
    assert len(fig.axes) == 4
    assert (tmp_path / "sbc.png").stat().st_size > 0


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("priors", "named"),
    [
        (None, "['locs', 'scale', 'corr_chol']"),
        ({"locs": lambda data: dist.Normal(0.0, 1.0)}, "['locs', 'scale', 'corr_chol']"),
        ({"locs": dist.Normal(0.0, 1.0), "scale": torch.ones(2)}, "['corr_chol']"),
    ],
)
def test_sbc_refuses_priors_that_depend_on_the_data(priors, named):
    model = GaussianMixture(1, "full", priors=priors)
    with pytest.raises(ValueError, match="SBC needs priors that do not depend on the data") as err:
        simulation_based_calibration(model, exact_sampler, num_replicates=5, n_obs=5,
                                     n_features=2)
    assert named in str(err.value)


def test_sbc_refuses_point_estimates():
    fit = partial(fit_em, max_iter=5, progress=False)
    with pytest.raises(ValueError, match="needs posterior draws"):
        simulation_based_calibration(correlated_model(), fit, num_replicates=3, n_obs=10,
                                     n_features=2, progress=False)


def test_sbc_refuses_more_ranks_than_draws():
    with pytest.raises(ValueError, match="fewer than num_ranks=100"):
        simulation_based_calibration(correlated_model(), exact_sampler, num_replicates=3,
                                     n_obs=10, n_features=2, num_ranks=100, progress=False)


# --------------------------------------------------------------------------- real drivers
def test_mean_field_sds_are_too_small_on_a_correlated_posterior():
    model = correlated_model()
    gen = torch.Generator().manual_seed(7)
    chol = torch.linalg.cholesky(CORR)
    x = torch.randn(50, 2, generator=gen) @ chol.T + torch.tensor([0.3, -0.2])
    mean, cov = analytic_posterior(x)
    exact_sd = cov.diagonal().sqrt()
    mean_field_sd = torch.linalg.inv(cov).diagonal().rsqrt()  # 1 / sqrt(Lambda_ii)
    assert torch.all(mean_field_sd < 0.4 * exact_sd)  # ~sqrt(1 - rho^2) = 0.31 for large N

    nuts = fit_mcmc(model, x, num_samples=400, warmup_steps=200, num_chains=1, init="prior",
                    progress=False)
    nuts_draws = nuts.draws["locs"].reshape(-1, 2).double()
    svi = fit_svi(model, x, guide="mean_field", num_steps=600, lr=0.03, num_draws=1000,
                  progress=False)
    svi_draws = svi.draws["locs"].reshape(-1, 2).double()
    print(f"\nexact sd {exact_sd.tolist()}, mean-field optimum {mean_field_sd.tolist()}, "
          f"NUTS {nuts_draws.std(0).tolist()}, SVI mean field {svi_draws.std(0).tolist()}")

    # NUTS matches the exact posterior: its draws' sd has a Monte-Carlo error of ~6% here
    # (ESS ~150 of 400 draws; 3000-draw chains give 0.133-0.146 for the exact 0.139).
    torch.testing.assert_close(nuts_draws.std(0), exact_sd, rtol=0.2, atol=0)
    torch.testing.assert_close(nuts_draws.mean(0), mean, rtol=0, atol=0.25 * float(exact_sd[0]))
    # Mean field: the right mean, the KL-optimal (too small) sds ...
    torch.testing.assert_close(svi_draws.mean(0), mean, rtol=0, atol=0.25 * float(exact_sd[0]))
    torch.testing.assert_close(svi_draws.std(0), mean_field_sd, rtol=0.2, atol=0)
    # ... measurably smaller than both the exact and NUTS's.
    assert torch.all(svi_draws.std(0) < 0.5 * exact_sd)
    assert torch.all(svi_draws.std(0) < 0.5 * nuts_draws.std(0))


NUTS_SBC = partial(fit_mcmc, num_chains=1, init="prior", progress=False)
MEAN_FIELD_SBC = partial(fit_svi, guide="mean_field", num_draws=100, progress=False)


def _sbc(fit, replicates: int, num_ranks: int | None = None) -> SBCResult:
    return simulation_based_calibration(correlated_model(), fit, num_replicates=replicates,
                                        n_obs=10, n_features=2, num_ranks=num_ranks, seed=0,
                                        progress=False)


def test_sbc_passes_nuts_and_flags_mean_field():
    nuts = _sbc(partial(NUTS_SBC, num_samples=100, warmup_steps=100), 20)
    mean_field = _sbc(partial(MEAN_FIELD_SBC, num_steps=150, lr=0.03), 30)
    print(f"\nSBC NUTS: {nuts.summary()}\nSBC mean field: {mean_field.summary()}")
    assert nuts.ranks.shape == (20, 2) and nuts.num_ranks == 100
    assert nuts.p_value > 0.01 and nuts.calibrated()
    assert np.all(np.abs(nuts.table["dispersion"] - 1.0) < 0.3)
    # Mean field: marginal sds ~0.34 of the exact ones here, so the truth falls in the outer
    # tails of its draws: U-shaped ranks, dispersion ~1.45 (sd of Phi(Z / 0.34) over 1/sqrt(12)).
    assert mean_field.p_value < 1e-3 and not mean_field.calibrated()
    assert np.all(mean_field.table["dispersion"] > 1.25)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sbc_full_size_passes_nuts():
    # 100 replicates, 200 draws thinned to 100 (every other one) against NUTS's
    # autocorrelation: about 5 minutes on one core.
    nuts = _sbc(partial(NUTS_SBC, num_samples=200, warmup_steps=200), 100, num_ranks=100)
    print(f"\nSBC NUTS: {nuts.summary()}")
    assert nuts.p_value > 0.01
    assert np.all(np.abs(nuts.table["dispersion"] - 1.0) < 0.15)
    assert np.all(np.abs(nuts.table["mean_rank"] - 0.5) < 0.1)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sbc_full_size_flags_mean_field():
    mean_field = _sbc(partial(MEAN_FIELD_SBC, num_steps=150, lr=0.03), 100)
    print(f"\nSBC mean field: {mean_field.summary()}")
    assert mean_field.p_value < 1e-6
    assert np.all(mean_field.table["dispersion"] > 1.3)
