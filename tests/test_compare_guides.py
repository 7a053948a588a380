"""The guide-comparison harness against independent answers.

* Importance sampling on the conjugate model (one spherical component, fixed scale sigma,
  Normal(m0, s0^2) prior on the location): the exact log evidence is closed form, since each
  feature's column is N(m0 1, sigma^2 I + s0^2 11^T), and so is the posterior (Gelman et al.,
  BDA3, §2.5). With the exact posterior as proposal every log weight equals log p(x); with a
  Gaussian proposal the ELBO is log p(x) - KL(q || p(theta | x)) in closed form.
* PSIS k-hat: a proposal wider than the posterior has bounded weights (k <= 0); one with
  sd ratio r < 1 has Pareto weights with k = 1 - r^2 (Yao et al., 2018, §3).
* Held-out lpd against scipy's densities; distances against identities (a posterior against
  itself) and against an affine shrink whose effect is known exactly.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from ppl_models.cli.compare_guides import add_subcommand
from ppl_models.data import load
from ppl_models.infer import fit_svi
from ppl_models.infer.result import FitResult
from ppl_models.models import GaussianMixture
from ppl_models.workflows.compare import METRICS, compare_guides, split_data
from ppl_models.workflows.distance import aggregate_distance, posterior_distance
from ppl_models.workflows.importance import (
    heldout_lpd,
    importance_estimates,
    importance_log_weights,
)

SIGMA, M0, S0 = 1.5, 0.5, 2.0


# ---------------------------------------------------------------- conjugate model
@pytest.fixture(scope="module")
def conjugate():
    gen = torch.Generator().manual_seed(1)
    x = (1.0 + SIGMA * torch.randn(25, 2, generator=gen)).double()
    model = GaussianMixture(
        1, "spherical", priors={"scale": torch.tensor([SIGMA]), "locs": dist.Normal(M0, S0)}
    )
    n = x.shape[0]
    precision = 1 / S0**2 + n / SIGMA**2
    mean = (M0 / S0**2 + x.sum(0) / SIGMA**2) / precision
    sd = torch.full_like(mean, precision**-0.5)
    cov = SIGMA**2 * torch.eye(n, dtype=x.dtype) + S0**2 * torch.ones(n, n, dtype=x.dtype)
    evidence = sum(
        float(dist.MultivariateNormal(torch.full((n,), M0, dtype=x.dtype), cov).log_prob(x[:, d]))
        for d in range(2)
    )
    return model, x, mean, sd, evidence


def gaussian_guide(loc: torch.Tensor, scale: torch.Tensor):
    """A user guide: independent Normals over the single component's location."""

    def guide(data):
        with pyro.plate("components", 1, dim=-1):
            pyro.sample("locs", dist.Normal(loc.unsqueeze(0), scale.unsqueeze(0)).to_event(1))

    return guide


def plain_conjugate_model(data):
    """The conjugate model as plain Pyro (no mixture hooks): the per-particle path."""
    loc = pyro.sample("locs", dist.Normal(M0, S0).expand([data.shape[1]]).to_event(1))
    with pyro.plate("obs", data.shape[0]):
        pyro.sample("x", dist.Normal(loc, SIGMA).to_event(1), obs=data)


def plain_guide(loc, scale):
    def guide(data):
        pyro.sample("locs", dist.Normal(loc, scale).to_event(1))

    return guide


def test_exact_posterior_proposal_has_every_weight_equal_to_the_evidence(conjugate):
    model, x, mean, sd, evidence = conjugate
    log_w = importance_log_weights(model, gaussian_guide(mean, sd), x, 500)
    assert log_w.shape == (500,)
    assert torch.allclose(log_w, torch.full_like(log_w, evidence), atol=1e-6)
    # The per-particle path (a model without mixture hooks) agrees with the same answer.
    log_w = importance_log_weights(plain_conjugate_model, plain_guide(mean, sd), x, 20)
    assert torch.allclose(log_w, torch.full_like(log_w, evidence), atol=1e-6)


def _kl_normal(loc_q, scale_q, loc_p, scale_p) -> float:
    return float(
        (
            torch.log(scale_p / scale_q)
            + (scale_q**2 + (loc_q - loc_p) ** 2) / (2 * scale_p**2)
            - 0.5
        ).sum()
    )


def test_elbo_is_evidence_minus_kl_and_iwae_closes_the_gap(conjugate):
    model, x, mean, sd, evidence = conjugate
    loc_q, scale_q = mean + sd, 1.5 * sd  # shifted and too wide
    kl = _kl_normal(loc_q, scale_q, mean, sd)
    guide = gaussian_guide(loc_q, scale_q)
    log_w = importance_log_weights(model, guide, x, 4000)
    # ELBO = log p(x) - KL(q || posterior): the Monte-Carlo mean within 4 standard errors.
    assert abs(float(log_w.mean()) - (evidence - kl)) < 4 * float(log_w.std()) / math.sqrt(4000)
    few = importance_estimates(model, guide, x, 10)
    many = importance_estimates(model, guide, x, 4000)
    assert many.elbo <= many.iwae <= evidence + 0.02
    assert evidence - many.iwae < 0.05 * kl < evidence - few.elbo
    # A proposal wider than the posterior has bounded weights: k-hat <= 0 in theory.
    assert many.k_hat < 0.5


def test_iwae_of_a_fitted_mean_field_guide_matches_the_exact_evidence(conjugate):
    model, x, _, _, evidence = conjugate
    x = x.float()  # the driver's guides run in the default dtype
    fit = fit_svi(model, x, guide="mean_field", num_steps=400, lr=0.05, lr_decay=0.02,
                  init="prior", num_draws=10, progress=False)
    pyro.set_rng_seed(3)
    est = importance_estimates(model, fit.guide, x, 2000)
    assert est.elbo <= est.iwae  # Jensen, on the same draws
    assert evidence - 0.02 < est.iwae < evidence + 0.01  # a bound, up to MC and float32 noise
    assert est.k_hat < 0.5


def test_narrow_distant_proposal_has_a_large_k_hat(conjugate):
    # sd ratio 0.1: Pareto weights with k = 1 - 0.1^2 = 0.99, and far from the posterior.
    model, x, mean, sd, evidence = conjugate
    est = importance_estimates(model, gaussian_guide(mean + 3 * sd, 0.1 * sd), x, 1000)
    assert est.k_hat > 0.7
    assert est.iwae < evidence - 1.0


# ---------------------------------------------------------------- held-out lpd
def _gmm_params():
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    locs = torch.tensor([[2.0, 55.0], [4.3, 80.0]], dtype=torch.float64)
    scale = torch.tensor([[0.3, 6.0], [0.4, 6.5]], dtype=torch.float64)
    rho = torch.tensor([0.2, 0.45], dtype=torch.float64)
    corr_chol = torch.zeros(2, 2, 2, dtype=torch.float64)
    corr_chol[:, 0, 0] = 1.0
    corr_chol[:, 1, 0] = rho
    corr_chol[:, 1, 1] = (1 - rho**2).sqrt()
    return {"weights": weights, "locs": locs, "scale": scale, "corr_chol": corr_chol}


def _scipy_log_density(x: np.ndarray, params) -> np.ndarray:
    """log sum_k w_k N(x | mu_k, Sigma_k) per row, with scipy."""
    terms = []
    for k in range(2):
        s = params["scale"][k].numpy()
        rho = float(params["corr_chol"][k, 1, 0])
        cov = np.array([[s[0] ** 2, rho * s[0] * s[1]], [rho * s[0] * s[1], s[1] ** 2]])
        terms.append(
            math.log(float(params["weights"][k]))
            + multivariate_normal(params["locs"][k].numpy(), cov).logpdf(x)
        )
    return logsumexp(np.stack(terms), axis=0)


def test_heldout_lpd_matches_scipy_for_a_point_and_for_draws():
    x, _ = load("faithful")
    test = x[:9].double()
    model = GaussianMixture(2, "full")
    point = _gmm_params()
    expected = _scipy_log_density(test.numpy(), point).sum()
    assert math.isclose(heldout_lpd(model, point, test), expected, rel_tol=1e-10)
    # Three draws: sum_n log mean_s p(x_n | theta_s).
    shifts = (0.0, 0.5, -1.0)
    draws = [{**point, "locs": point["locs"] + s} for s in shifts]
    stacked = {k: torch.stack([d[k] for d in draws]).unsqueeze(0) for k in point}
    per_draw = np.stack([_scipy_log_density(test.numpy(), d) for d in draws])
    expected = (logsumexp(per_draw, axis=0) - math.log(3)).sum()
    assert math.isclose(heldout_lpd(model, stacked, test), expected, rel_tol=1e-10)
    assert math.isnan(heldout_lpd(model, point, test[:0]))


def test_split_is_a_seeded_partition_of_the_rows():
    x = torch.arange(40.0).reshape(20, 2)
    train, test = split_data(x, 0.25, seed=3)
    assert (train.shape[0], test.shape[0]) == (15, 5)
    rows = sorted(map(tuple, torch.cat([train, test]).tolist()))
    assert rows == sorted(map(tuple, x.tolist()))
    assert torch.equal(split_data(x, 0.25, seed=3)[1], test)
    assert not torch.equal(split_data(x, 0.25, seed=4)[1], test)
    assert split_data(x, 0.0)[1].shape == (0, 2)
    with pytest.raises(ValueError, match=r"holdout must be a number in \[0, 1\)"):
        split_data(x, 1.0)


# ---------------------------------------------------------------- distances
@pytest.fixture(scope="module")
def reference_fit():
    """Hand-made 'NUTS' draws (2 chains x 300) around two well-separated components."""
    gen = torch.Generator().manual_seed(0)
    point = _gmm_params()
    shape = (2, 300)

    def jitter(value, size):
        return value + size * torch.randn(*shape, *value.shape, generator=gen, dtype=value.dtype)

    weights = torch.softmax(jitter(point["weights"].log(), 0.1), -1)
    rho = jitter(torch.tensor([0.2, 0.45], dtype=torch.float64), 0.05)
    corr_chol = torch.zeros(*shape, 2, 2, 2, dtype=torch.float64)
    corr_chol[..., 0, 0] = 1.0
    corr_chol[..., 1, 0] = rho
    corr_chol[..., 1, 1] = (1 - rho**2).sqrt()
    draws = {
        "weights": weights,
        "locs": jitter(point["locs"], 0.1),
        "scale": jitter(point["scale"], 0.02).abs(),
        "corr_chol": corr_chol,
    }
    x, _ = load("faithful")
    return _result(draws, x.double(), "nuts")


def _result(draws, data, method, params=None):
    if params is None:
        params = {k: v.mean((0, 1)) for k, v in draws.items()}
    return FitResult(
        model=GaussianMixture(2, "full"), method=method, data=data, params=params,
        draws=draws, history={}, converged=True, n_iter=1, seed=0, fit_seconds=0.0,
    )


def test_a_posterior_is_at_distance_zero_from_itself_even_label_switched(reference_fit):
    draws = reference_fit.draws
    flat = {k: v.reshape(1, -1, *v.shape[2:]).clone() for k, v in draws.items()}
    switched = {k: v.clone() for k, v in flat.items()}
    for k in switched:  # swap the components of every other draw
        switched[k][:, ::2] = flat[k][:, ::2].flip(2)
    guide = _result(switched, reference_fit.data, "svi")
    table = posterior_distance(reference_fit, guide)
    # 2 weights + 4 locs + 4 scales + 2x2 varying corr_chol entries ([k,0,:] are constants)
    assert len(table) == 14 and set(table["site"]) == {"weights", "locs", "scale", "corr_chol"}
    assert np.allclose(table["mean_error"], 0, atol=1e-9)
    assert np.allclose(table["sd_ratio"], 1, atol=1e-9)
    assert np.allclose(table["wasserstein"], 0, atol=1e-9)
    agg = aggregate_distance(table)
    assert math.isclose(agg["sd_ratio"], 1) and math.isclose(agg["sd_ratio_min"], 1)


@pytest.mark.parametrize("factor", [0.5, 0.0])
def test_a_known_shrink_of_the_sd_is_measured_exactly(reference_fit, factor):
    draws = reference_fit.draws
    mean = {k: v.mean((0, 1), keepdim=True) for k, v in draws.items()}
    if factor == 0.0:  # a point estimate at the reference mean
        guide = _result(None, reference_fit.data, "svi", {k: v[0, 0] for k, v in mean.items()})
    else:
        shrunk = {k: mean[k] + factor * (v - mean[k]) for k, v in draws.items()}
        guide = _result(shrunk, reference_fit.data, "svi")
    table = posterior_distance(reference_fit, guide).set_index(["site", "index"])
    assert np.allclose(table["sd_ratio"], factor, atol=1e-9)
    assert np.allclose(table["mean_error"], 0, atol=1e-9)
    # W1 between X and m + c (X - m) is (1 - c) E|X - m| (the monotone coupling).
    for (site, index), row in table.iterrows():
        x = draws[site].reshape(-1, *draws[site].shape[2:]).numpy()
        x = x[(slice(None), *map(int, index.split(",")))]
        expected = (1 - factor) * np.abs(x - x.mean()).mean() / x.std(ddof=1)
        assert math.isclose(row["wasserstein"], expected, rel_tol=1e-9), (site, index)
    agg = aggregate_distance(table.reset_index())
    assert math.isclose(agg["sd_ratio"], factor, abs_tol=1e-9)
    assert math.isclose(agg["sd_ratio_min"], factor, abs_tol=1e-9)


# ---------------------------------------------------------------- the harness
@pytest.fixture(scope="module")
def small_comparison():
    x, _ = load("faithful")
    return compare_guides(
        GaussianMixture(2, "full"), x[::4], ["map", "mean_field"], num_steps=40, seeds=2,
        nuts_samples=30, nuts_warmup=30, nuts_chains=1, nuts_options={"max_tree_depth": 3},
        num_particles=200, num_draws=100, progress=False,
    )


def test_comparison_table_has_a_row_per_guide_and_every_metric(small_comparison):
    c = small_comparison
    assert list(c.table.index) == ["map", "mean_field", "nuts"]
    for key in METRICS:
        assert key in c.table and f"{key}_sd" in c.table, key
    assert list(c.table["n_seeds"]) == [2, 2, 1]
    assert len(c.per_seed) == 5 and len(c.per_scalar) == 2 * 2 * 14
    assert c.settings["n_train"] + c.settings["n_test"] == 68 and c.settings["n_test"] == 14
    # map: a point mass, so no ELBO/IWAE/k-hat; its sd ratio is 0.
    assert c.table.loc["map", ["elbo", "iwae", "k_hat"]].isna().all()
    assert c.table.loc["map", "sd_ratio"] == 0 and "point estimate" in c.notes["map"]
    mf = c.per_seed[c.per_seed["guide"] == "mean_field"]
    assert np.isfinite(mf[["elbo", "iwae", "k_hat", "heldout_lpd", "wasserstein"]]).all().all()
    assert (mf["iwae"] >= mf["elbo"]).all()  # Jensen on the same importance weights
    assert (c.per_seed["fit_seconds"] > 0).all()


def test_comparison_heldout_lpd_of_map_matches_scipy(small_comparison):
    c = small_comparison
    x, _ = load("faithful")
    _, test = split_data(x[::4], 0.2, seed=0)
    for seed in (0, 1):
        fit = c.fits[("map", seed)]
        params = {k: v.double() for k, v in fit.params.items()}
        expected = _scipy_log_density(test.double().numpy(), params).sum()
        row = c.per_seed[(c.per_seed["guide"] == "map") & (c.per_seed["seed"] == seed)]
        assert math.isclose(float(row["heldout_lpd"].iloc[0]), expected, rel_tol=1e-4)
    assert c.table.loc["nuts", "method"] == "nuts"
    assert c.reference is not None and c.reference.draws["locs"].shape == (1, 30, 2, 2)


def test_a_given_reference_is_reused(small_comparison):
    x, _ = load("faithful")
    ref = small_comparison.reference
    c = compare_guides(GaussianMixture(2, "full"), x[::4], ["mean_field"], num_steps=20,
                       seeds=[5], reference=ref, num_particles=50, num_draws=50, progress=False)
    assert c.reference is ref and c.settings["reference"] == "given"
    assert c.table.loc["nuts", "fit_seconds"] == ref.fit_seconds
    assert list(c.per_seed["seed"]) == [5, ref.seed]


def test_a_reference_fitted_on_other_data_is_refused(reference_fit):
    x, _ = load("faithful")
    with pytest.raises(ValueError, match="fitted on other data than the training split"):
        compare_guides(GaussianMixture(2), x, ["mean_field"], reference=reference_fit,
                       num_steps=1, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"guides": ["meanfield"]}, r"unknown guide kind 'meanfield'.*mean_field"),
        ({"guides": ["map", "map"]}, "guide names must be unique"),
        ({"guides": "map"}, "non-empty list"),
        ({"seeds": 0}, "seeds must be a positive integer; got 0"),
        ({"seeds": [0, 1.5]}, r"seeds\[1\] must be a non-negative integer; got 1.5"),
        ({"seeds": [1, 1]}, "seeds must be distinct"),
        ({"holdout": 1.5}, r"holdout must be a number in \[0, 1\); got 1.5"),
        ({"num_particles": 5}, "num_particles must be an integer of at least 10; got 5"),
        ({"reference": "advi"}, "reference must be 'nuts', None or a FitResult"),
        ({"svi_options": {"seed": 3}}, r"svi_options may not set \['seed'\]"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, message):
    x, _ = load("faithful")
    args = {"guides": ["map"], "num_steps": 1, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        compare_guides(GaussianMixture(2), x, **args)


# ---------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppl-models")
    add_subcommand(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_writes_table_metrics_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = _parser().parse_args(
        ["compare-guides", "gmm", "--guides", "map,flow", "--steps", "30", "--seeds", "1",
         "--nuts-samples", "0", "--particles", "50", "--draws", "50", "--out", str(out)]
    )
    assert args.run(args) == 0
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    figures = json.loads(text)
    rows = {r["guide"]: r for r in figures["table"]}
    assert list(rows) == ["map", "flow"]
    assert rows["map"]["elbo"] is None and isinstance(rows["flow"]["heldout_lpd"], float)
    assert figures["settings"]["n_train"] == 218 and figures["reference"] is None
    assert (out / "comparison.csv").read_text().splitlines()[0].startswith("guide,method")
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "heldout_lpd" in printed and "comparison.png" in printed


def test_cli_usage_errors():
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["compare-guides", "gmm", "--seeds", "0"])
    assert exc.value.code == 2
    args = _parser().parse_args(["compare-guides", "gmm", "--guides", "map,nope", "--quiet"])
    with pytest.raises(ValueError, match="unknown guide kind 'nope'"):
        args.run(args)


# ---------------------------------------------------------------- real settings
@pytest.mark.slow
def test_full_old_faithful_comparison_against_nuts():
    x, _ = load("faithful")
    c = compare_guides(
        GaussianMixture(2, "full"), x, ["mean_field", "full_rank"], num_steps=2000, seeds=2,
        nuts_samples=300, nuts_warmup=300, nuts_chains=2, progress=False,
    )
    assert c.reference.info["max_r_hat"] < 1.05
    for guide in ("mean_field", "full_rank"):
        row = c.table.loc[guide]
        assert row["iwae"] >= row["elbo"]
        assert row["mean_error"] < 0.5  # posterior means within half a NUTS sd
        assert 0.5 < row["sd_ratio"] < 1.5
        # predictive within 2 nats of NUTS on 54 held-out points
        assert abs(row["heldout_lpd"] - c.table.loc["nuts", "heldout_lpd"]) < 2.0


# ---------------------------------------------------------------- the Laplace family's spread
def _inverse_hessian_sd(x: torch.Tensor, params: dict[str, torch.Tensor]) -> dict:
    r"""Laplace sd of each site in the unconstrained space, computed here from scratch.

    The collapsed log joint of a diagonal two-component GMM under its documented default
    priors (Dirichlet(1), Normal(mean, 3 sd), Gamma(2, 2 / sd)), written with plain torch
    distributions, plus the log-Jacobians of ``biject_to``; its negative Hessian at the fitted
    point by ``torch.autograd.functional.hessian``; the sd is the square root of the diagonal
    of its inverse.
    """
    from torch.distributions import biject_to, constraints

    centre, spread = x.mean(0), x.std(0)
    supports = {"weights": constraints.simplex, "locs": constraints.real,
                "scale": constraints.positive}
    shapes = {k: params[k].shape for k in supports}
    free = {k: biject_to(c).inv(params[k]) for k, c in supports.items()}
    sizes = {k: v.numel() for k, v in free.items()}
    free_shapes = {k: v.shape for k, v in free.items()}

    def log_joint(u: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(sizes, u.split(list(sizes.values())), strict=True))
        total = torch.zeros((), dtype=u.dtype)
        theta = {}
        for k, c in supports.items():
            uk = parts[k].reshape(free_shapes[k])
            t = biject_to(c)
            theta[k] = t(uk).reshape(shapes[k])
            total = total + t.log_abs_det_jacobian(uk, theta[k]).sum()
        w, mu, s = theta["weights"], theta["locs"], theta["scale"]
        total = total + torch.distributions.Dirichlet(torch.ones(2, dtype=u.dtype)).log_prob(w)
        total = total + torch.distributions.Normal(centre, 3 * spread).log_prob(mu).sum()
        total = total + torch.distributions.Gamma(2.0, 2.0 / spread).log_prob(s).sum()
        comp = torch.distributions.Normal(mu, s).log_prob(x.unsqueeze(1)).sum(-1)  # (N, K)
        return total + torch.logsumexp(comp + w.log(), -1).sum()

    u_hat = torch.cat([v.reshape(-1) for v in free.values()])
    hess = torch.autograd.functional.hessian(log_joint, u_hat)
    sd = torch.linalg.inv(-hess).diagonal().sqrt()
    return {k: v.reshape(free_shapes[k])
            for k, v in zip(sizes, sd.split(list(sizes.values())), strict=True)}


def test_laplace_comparison_reports_the_laplace_posterior_spread():
    from torch.distributions import biject_to, constraints

    x = load("faithful")[0].double()
    model = GaussianMixture(2, "diag")
    steps, draws = 300, 1000
    fit = fit_svi(model, x, guide="laplace", num_steps=steps, num_draws=draws, progress=False)
    comparison = compare_guides(
        model, x, ["laplace"], num_steps=steps, seeds=[0], reference=None, holdout=0.0,
        num_particles=10, num_draws=draws, progress=False,
    )
    compared = comparison.fits[("laplace", 0)]
    assert "point estimate" not in comparison.notes.get("laplace", "")
    expected = _inverse_hessian_sd(x, fit.params)
    for name, support in (("locs", constraints.real), ("scale", constraints.positive)):
        for result in (fit, compared):
            free = biject_to(support).inv(result.draws[name][0])
            # 1000 draws: the sd's relative standard error is about 2%
            torch.testing.assert_close(free.std(0), expected[name], rtol=0.1, atol=0)
    # the same fit, the same draws: the harness does what fit_svi does
    for name, value in fit.draws.items():
        torch.testing.assert_close(compared.draws[name], value)
    assert float(fit.draws["locs"].std((0, 1))[1, 1]) > 0.1  # minutes, not a point mass
