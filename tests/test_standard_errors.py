r"""Standard errors of EM fits against independent answers.

* K = 1: the closed-form asymptotic standard errors of the Gaussian MLE, with the MLE plugged
  in (for the Gaussian the observed information at the MLE equals the expected one):
  se(mu_i) = sqrt(S_ii / n); se(S_ij) = sqrt((S_ij^2 + S_ii S_jj) / n), so S_ii sqrt(2 / n)
  for a variance; se(sigma_i) = sigma_i / sqrt(2 n); se(rho) = (1 - rho^2) / sqrt(n); and for
  the Cholesky factor of the correlation matrix, L_10 = rho with se (1 - rho^2) / sqrt(n) and
  L_11 = sqrt(1 - rho^2) with se |rho| sqrt(1 - rho^2) / sqrt(n) (delta method).
* K = 2: the coverage of the 95% Wald interval over simulated replicates (binomial error), and
  the parametric bootstrap on one data set.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ppl_models.infer import fit_em
from ppl_models.infer.standard_errors import compute_standard_errors, standard_errors
from ppl_models.models import GaussianMixture


def _gaussian(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    cov = np.array([[2.0, 0.9], [0.9, 1.0]])
    return torch.as_tensor(rng.multivariate_normal([1.0, -2.0], cov, size=n))


def test_single_gaussian_full_matches_closed_form() -> None:
    n = 400
    x = _gaussian(n)
    result = fit_em(GaussianMixture(1, "full"), x, reg_covar=0.0, progress=False)
    errors = standard_errors(result)
    xn = x.numpy()
    sigma = np.cov(xn.T, bias=True)
    sd = np.sqrt(np.diag(sigma))
    rho = sigma[0, 1] / (sd[0] * sd[1])
    np.testing.assert_allclose(errors["locs"]["estimate"][0].numpy(), xn.mean(0), rtol=1e-10)
    np.testing.assert_allclose(errors["locs"]["se"][0].numpy(), np.sqrt(np.diag(sigma) / n),
                               rtol=1e-6)
    cov_se = np.sqrt((sigma**2 + np.outer(np.diag(sigma), np.diag(sigma))) / n)
    np.testing.assert_allclose(errors["covariances"]["se"][0].numpy(), cov_se, rtol=1e-6)
    np.testing.assert_allclose(errors["scale"]["se"][0].numpy(), sd / math.sqrt(2 * n),
                               rtol=1e-6)
    chol_se = errors["corr_chol"]["se"][0].numpy()
    assert chol_se[1, 0] == pytest.approx((1 - rho**2) / math.sqrt(n), rel=1e-6)
    assert chol_se[1, 1] == pytest.approx(abs(rho) * math.sqrt(1 - rho**2) / math.sqrt(n),
                                          rel=1e-6)
    assert chol_se[0, 0] == pytest.approx(0.0, abs=1e-12)
    # Wald interval: estimate +- 1.959964 se
    lower = errors["locs"]["lower"][0].numpy()
    np.testing.assert_allclose(lower, xn.mean(0) - 1.959963985 * np.sqrt(np.diag(sigma) / n),
                               rtol=1e-8)


def test_single_gaussian_one_feature_variance_se() -> None:
    n = 250
    x = _gaussian(n, seed=1)[:, :1]
    result = fit_em(GaussianMixture(1, "diag"), x, reg_covar=0.0, progress=False)
    errors = standard_errors(result)
    var = float(x.var(unbiased=False))
    assert float(errors["locs"]["se"][0, 0]) == pytest.approx(math.sqrt(var / n), rel=1e-6)
    assert float(errors["scale"]["se"][0, 0]) == pytest.approx(math.sqrt(var / (2 * n)),
                                                              rel=1e-6)
    assert float(errors["covariances"]["se"][0, 0, 0]) == pytest.approx(
        var * math.sqrt(2 / n), rel=1e-6)


TRUE = {"weights": 0.3, "locs": (-2.0, 2.0), "scale": (0.7, 1.0)}


def _two_components(n: int, rng: np.random.Generator) -> torch.Tensor:
    labels = rng.random(n) < TRUE["weights"]
    x = np.where(labels, rng.normal(TRUE["locs"][0], TRUE["scale"][0], n),
                 rng.normal(TRUE["locs"][1], TRUE["scale"][1], n))
    return torch.as_tensor(x[:, None])


def _ordered(errors):
    """Tables with the components ordered by location (the truth's order)."""
    order = errors["locs"]["estimate"][:, 0].argsort()
    return {name: {k: v[order] for k, v in table.items()} for name, table in errors.items()}


@pytest.mark.slow
def test_wald_coverage_two_components_within_binomial_error() -> None:
    reps, n = 240, 400
    rng = np.random.default_rng(2026)
    hits = {"w0": 0, "mu0": 0, "mu1": 0, "s0": 0, "s1": 0}
    for _ in range(reps):
        x = _two_components(n, rng)
        result = fit_em(GaussianMixture(2, "diag"), x, tol=1e-8, max_iter=1000, progress=False)
        e = _ordered(compute_standard_errors(result).sites)
        checks = {
            "w0": (e["weights"], 0, TRUE["weights"]),
            "mu0": (e["locs"], (0, 0), TRUE["locs"][0]),
            "mu1": (e["locs"], (1, 0), TRUE["locs"][1]),
            "s0": (e["scale"], (0, 0), TRUE["scale"][0]),
            "s1": (e["scale"], (1, 0), TRUE["scale"][1]),
        }
        for key, (table, idx, truth) in checks.items():
            hits[key] += bool(table["lower"][idx] <= truth <= table["upper"][idx])
    sd = math.sqrt(0.95 * 0.05 / reps)
    for key, count in hits.items():
        assert abs(count / reps - 0.95) <= 3 * sd, (key, count / reps)


def test_wald_close_to_parametric_bootstrap() -> None:
    rng = np.random.default_rng(7)
    x = _two_components(600, rng)
    result = fit_em(GaussianMixture(2, "diag"), x, tol=1e-8, max_iter=1000, progress=False)
    wald = _ordered(compute_standard_errors(result).sites)
    boot = _ordered(compute_standard_errors(result, "bootstrap", n_boot=150, seed=1).sites)
    for name in ("weights", "locs", "scale"):
        ratio = boot[name]["se"] / wald[name]["se"]
        assert ((ratio > 0.75) & (ratio < 1.33)).all(), (name, ratio)
    # percentile intervals hold the estimate
    for name in ("locs", "scale"):
        assert (boot[name]["lower"] < wald[name]["estimate"]).all()
        assert (wald[name]["estimate"] < boot[name]["upper"]).all()


def test_fit_em_stores_json_ready_standard_errors() -> None:
    x = _two_components(300, np.random.default_rng(3))
    result = fit_em(GaussianMixture(2, "full"), x, standard_errors=True, progress=False)
    stored = result.info["standard_errors"]
    text = json.dumps(stored, allow_nan=False)
    assert stored["asymptotic"] is True and stored["method"] == "observed_information"
    assert set(stored["sites"]) == {"weights", "locs", "scale", "covariances"}
    direct = compute_standard_errors(result).sites
    np.testing.assert_allclose(stored["sites"]["locs"]["se"], direct["locs"]["se"].numpy())
    assert "NaN" not in text
    assert "standard_errors" not in fit_em(GaussianMixture(2), x, progress=False).info


def test_weight_near_zero_is_flagged() -> None:
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(size=(400, 1)), [[8.0], [8.1], [7.9]]])
    result = fit_em(GaussianMixture(2, "diag"), torch.as_tensor(x), progress=False)
    with pytest.warns(UserWarning, match="weights near 0"):
        standard_errors(result)


def test_bad_requests_are_value_errors() -> None:
    x = _two_components(100, np.random.default_rng(5))
    result = fit_em(GaussianMixture(2, "diag"), x, progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        compute_standard_errors(result, "jackknife")
    with pytest.raises(ValueError, match="n_boot"):
        compute_standard_errors(result, "bootstrap", n_boot=1)
    with pytest.raises(ValueError, match="level"):
        compute_standard_errors(result, level=1.5)
