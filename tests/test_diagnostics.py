"""Tests for ppl_models.diagnostics: relabelling, ArviZ conversion, summaries, LOO and plots.

No driver but ``fit_em`` is used: the "NUTS" and "SVI" results are built by hand from draws
made here (small perturbations of an EM fit, components permuted at random per draw), so every
expectation has an independent reference (the permutation applied, scipy's densities).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from ppl_models import GaussianMixture, fit_em, load
from ppl_models._arviz import az
from ppl_models.diagnostics import (
    loo,
    plot_mixture,
    plot_objective,
    plot_posterior,
    plot_trace,
    relabel_draws,
    relabel_result,
    save_plots,
    summarize,
    to_inference_data,
)
from ppl_models.diagnostics.relabel import canonical_order, label_permutations
from ppl_models.infer import FitResult

N_CHAINS, N_DRAWS = 2, 60
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# fixtures: an EM fit and hand-made draws


@pytest.fixture(scope="module")
def faithful() -> tuple[torch.Tensor, list[str]]:
    return load("faithful", dtype=torch.float64)


@pytest.fixture(scope="module")
def em2(faithful) -> FitResult:
    x, names = faithful
    return fit_em(GaussianMixture(2), x, columns=names, seed=0)


@pytest.fixture(scope="module")
def em3(faithful) -> FitResult:
    x, names = faithful
    return fit_em(GaussianMixture(3), x, columns=names, seed=0, n_init=2)


def _sorted_params(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Components ordered by the first feature of locs (the test's own sort)."""
    order = torch.argsort(params["locs"][:, 0])
    return {k: v[order] for k, v in params.items()}


def _perturbed_draws(
    params: dict[str, torch.Tensor], n_chains: int, n_draws: int, seed: int
) -> dict[str, torch.Tensor]:
    """Draws ``(chain, draw, ...)`` scattered tightly around ``params`` (D = 2, full)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n_chains, n_draws)

    def noise(*site_shape: int) -> torch.Tensor:
        return torch.randn(*shape, *site_shape, generator=g, dtype=torch.float64)

    k, d = params["locs"].shape
    assert d == 2
    weights = torch.softmax(params["weights"].log() + 0.05 * noise(k), -1)
    locs = params["locs"] + 0.01 * params["scale"] * noise(k, d)
    scale = params["scale"] * torch.exp(0.02 * noise(k, d))
    r = (params["corr_chol"][:, 1, 0] + 0.02 * noise(k)).clamp(-0.95, 0.95)
    corr_chol = torch.zeros(*shape, k, 2, 2, dtype=torch.float64)
    corr_chol[..., 0, 0] = 1.0
    corr_chol[..., 1, 0] = r
    corr_chol[..., 1, 1] = (1 - r**2).sqrt()
    return {"weights": weights, "locs": locs, "scale": scale, "corr_chol": corr_chol}


def _permute(draws: dict[str, torch.Tensor], perms: torch.Tensor) -> dict[str, torch.Tensor]:
    """``out[site][c, s] = draws[site][c, s][perms[c, s]]`` by explicit loops."""
    out = {}
    for name, value in draws.items():
        new = torch.empty_like(value)
        for c in range(perms.shape[0]):
            for s in range(perms.shape[1]):
                new[c, s] = value[c, s][perms[c, s]]
        out[name] = new
    return out


def _random_perms(k: int, n_chains: int, n_draws: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack(
        [torch.stack([torch.randperm(k, generator=g) for _ in range(n_draws)]) for _ in range(2)]
    )[:n_chains]


@pytest.fixture(scope="module")
def fake(em3) -> dict:
    """A hand-made 2-chain "NUTS" result: clean draws, then labels switched at random."""
    base_params = _sorted_params(em3.params)
    clean = _perturbed_draws(base_params, N_CHAINS, N_DRAWS, seed=1)
    perms = _random_perms(3, N_CHAINS, N_DRAWS, seed=2)
    switched = _permute(clean, perms)
    result = FitResult(
        model=em3.model,
        method="nuts",
        data=em3.data,
        params=dict(em3.params),  # unsorted order: the relabelling sorts it
        draws=switched,
        history={},
        converged=True,
        n_iter=N_DRAWS,
        seed=0,
        fit_seconds=0.0,
        info={"num_chains": N_CHAINS, "num_samples": N_DRAWS},
        columns=list(em3.columns),
    )
    return {"result": result, "clean": clean, "perms": perms, "base": base_params}


@pytest.fixture(scope="module")
def fake_idata(fake) -> az.InferenceData:
    return to_inference_data(fake["result"], num_predictive=10, seed=3)


@pytest.fixture(scope="module")
def em_idata(em2) -> az.InferenceData:
    return to_inference_data(em2, num_predictive=100, seed=0)


def _scipy_loglik(x: np.ndarray, w, mu, scale, corr_chol) -> np.ndarray:
    """log sum_k w_k N(x_n | mu_k, diag(s_k) L_k L_k^T diag(s_k)), with scipy."""
    terms = []
    for k in range(len(w)):
        chol = np.diag(scale[k]) @ corr_chol[k]
        cov = chol @ chol.T
        terms.append(np.log(w[k]) + stats.multivariate_normal(mu[k], cov).logpdf(x))
    return logsumexp(np.stack(terms), axis=0)


# ---------------------------------------------------------------------------------------------
# (a) relabelling


def test_relabel_draws_undoes_known_permutation(fake) -> None:
    draws = fake["result"].draws
    # the switched draws really are switched
    assert not torch.equal(draws["locs"], fake["clean"]["locs"])
    out = relabel_draws(draws, fake["base"]["locs"], sites=fake["result"].model.relabel_sites())
    for name, value in fake["clean"].items():
        assert torch.equal(out[name], value), name


def test_label_permutations_are_inverse_of_applied(fake) -> None:
    perms = fake["perms"].numpy()
    found = label_permutations(fake["result"].draws["locs"], fake["base"]["locs"])
    inverse = np.argsort(perms, axis=-1)
    np.testing.assert_array_equal(found, inverse)


def test_relabel_result_sorts_point_estimate_and_matches_draws(fake) -> None:
    rel = relabel_result(fake["result"])
    assert rel.applied
    for name, value in fake["base"].items():
        torch.testing.assert_close(rel.params[name], value, rtol=0, atol=0)
    for name, value in fake["clean"].items():
        assert torch.equal(rel.draws[name], value), name


def test_relabel_result_recovers_from_blurred_reference(fake) -> None:
    """A point estimate averaged over switched labels (all components near the centre)."""
    switched = fake["result"].draws
    blurred = {k: v.mean((0, 1)) for k, v in switched.items()}
    spread = blurred["locs"].max(0).values - blurred["locs"].min(0).values
    base_spread = fake["base"]["locs"].max(0).values - fake["base"]["locs"].min(0).values
    assert torch.all(spread < 0.5 * base_spread)  # the reference is indeed blurred
    result = replace(fake["result"], params=blurred)
    rel = relabel_result(result)
    # labels agree with the clean draws up to one global permutation
    perm = label_permutations(rel.draws["locs"].mean((0, 1)), fake["base"]["locs"])
    for name, value in fake["clean"].items():
        relabelled = rel.draws[name][:, :, perm]
        assert torch.equal(relabelled, value), name


def test_relabel_keeps_labels_when_fixed_site_identifies_them(em2) -> None:
    model = GaussianMixture(
        2, covariance_type="diag", priors={"scale": torch.tensor([[1.0, 1.0], [2.0, 2.0]])}
    )
    params = {"weights": torch.tensor([0.5, 0.5]), "locs": torch.tensor([[5.0, 0.0], [1.0, 0]])}
    result = FitResult(model, "em", em2.data, params, None, {}, True, 1, 0, 0.0)
    rel = relabel_result(result)
    assert not rel.applied and "scale" in rel.note
    assert torch.equal(rel.params["locs"], params["locs"])


def test_canonical_order_breaks_ties_with_next_feature() -> None:
    locs = np.array([[1.0, 5.0], [0.0, 9.0], [1.0, 2.0]])
    np.testing.assert_array_equal(canonical_order(locs), [1, 2, 0])


def test_relabel_draws_rejects_mismatched_reference(fake) -> None:
    with pytest.raises(ValueError, match="shape"):
        relabel_draws(
            fake["result"].draws, torch.zeros(2, 2), sites=fake["result"].model.relabel_sites()
        )


# ---------------------------------------------------------------------------------------------
# (b) log-likelihood, covariances


def test_log_likelihood_matches_scipy(fake, fake_idata) -> None:
    x = fake["result"].data.numpy()
    switched = {k: v.numpy() for k, v in fake["result"].draws.items()}
    ll = fake_idata.log_likelihood["x"]
    for c, s in [(0, 0), (0, 17), (1, 5), (1, N_DRAWS - 1)]:
        expected = _scipy_loglik(
            x,
            switched["weights"][c, s],
            switched["locs"][c, s],
            switched["scale"][c, s],
            switched["corr_chol"][c, s],
        )
        np.testing.assert_allclose(ll.values[c, s], expected, rtol=1e-10, atol=1e-10)


def test_em_log_likelihood_sums_to_em_total(em2, em_idata) -> None:
    total = float(em_idata.log_likelihood["x"].sum())
    assert total == pytest.approx(em2.info["log_likelihood"], rel=1e-10)
    p = _sorted_params(em2.params)
    expected = _scipy_loglik(
        em2.data.numpy(),
        p["weights"].numpy(),
        p["locs"].numpy(),
        p["scale"].numpy(),
        p["corr_chol"].numpy(),
    )
    np.testing.assert_allclose(em_idata.log_likelihood["x"].values[0, 0], expected, rtol=1e-10)


def test_covariances_variable(fake, fake_idata) -> None:
    clean = {k: v.numpy() for k, v in fake["clean"].items()}
    cov = fake_idata.posterior["covariances"].values
    for c, s, k in [(0, 3, 0), (1, 7, 2), (1, 30, 1)]:
        chol = np.diag(clean["scale"][c, s, k]) @ clean["corr_chol"][c, s, k]
        np.testing.assert_allclose(cov[c, s, k], chol @ chol.T, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# (c) groups, dims and coords


def test_groups_dims_and_coords(fake, fake_idata, faithful) -> None:
    _, names = faithful
    idata = fake_idata
    assert set(idata.groups()) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
        "prior",
        "prior_predictive",
    }
    post = idata.posterior
    assert list(post.coords["component"].values) == [0, 1, 2]
    assert list(post.coords["feature"].values) == names
    assert list(post.coords["feature_bis"].values) == names
    assert post["weights"].dims == ("chain", "draw", "component")
    assert post["locs"].dims == ("chain", "draw", "component", "feature")
    assert post["scale"].dims == ("chain", "draw", "component", "feature")
    # the constant unit diagonal and zero upper triangle are left out of draws
    assert post["corr_chol"].dims == ("chain", "draw", "component", "corr_chol_entry")
    assert post["covariances"].dims == ("chain", "draw", "component", "feature", "feature_bis")
    assert post.sizes["chain"] == N_CHAINS and post.sizes["draw"] == N_DRAWS
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "obs")
    assert idata.log_likelihood["x"].shape == (N_CHAINS, N_DRAWS, 272)
    assert list(idata.log_likelihood.coords["obs"].values) == list(range(272))
    assert idata.observed_data["x"].dims == ("obs", "feature")
    np.testing.assert_array_equal(idata.observed_data["x"].values, fake["result"].data.numpy())
    assert post.attrs["method"] == "nuts"
    assert post.attrs["point_estimate"] == 0
    # relabelled values in the posterior
    np.testing.assert_array_equal(post["locs"].values, fake["clean"]["locs"].numpy())


def test_em_posterior_is_one_marked_draw(em2, em_idata) -> None:
    post = em_idata.posterior
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == 1
    assert post.attrs["point_estimate"] == 1
    assert post.attrs["method"] == "em"
    assert post.attrs["bic"] == pytest.approx(em2.info["bic"])
    assert post.attrs["aic"] == pytest.approx(em2.info["aic"])
    assert isinstance(post.attrs["warnings"], str)  # a list, as JSON
    expected = _sorted_params(em2.params)["locs"].numpy()
    np.testing.assert_array_equal(post["locs"].values[0, 0], expected)


def test_default_feature_names_without_columns(em2) -> None:
    result = replace(em2, columns=[])
    idata = to_inference_data(result, num_predictive=0)
    assert list(idata.posterior.coords["feature"].values) == ["x0", "x1"]
    assert "posterior_predictive" not in idata.groups()


@pytest.mark.parametrize(
    ("k", "covariance_type", "d"),
    [(1, "full", 2), (2, "spherical", 2), (2, "diag", 2), (2, "full", 1)],
)
def test_other_structures(faithful, tmp_path, k, covariance_type, d) -> None:
    x, names = faithful
    result = fit_em(GaussianMixture(k, covariance_type), x[:, :d], columns=names[:d])
    idata = to_inference_data(result, num_predictive=3)
    post = idata.posterior
    assert ("weights" in post) == (k > 1)
    assert post["covariances"].shape == (1, 1, k, d, d)
    if covariance_type == "spherical":
        assert post["scale"].dims == ("chain", "draw", "component")
    assert idata.posterior_predictive["x"].shape == (1, 3, 272, d)
    total = float(idata.log_likelihood["x"].sum())
    assert total == pytest.approx(result.info["log_likelihood"], rel=1e-9)
    idata.to_netcdf(tmp_path / "idata.nc")
    fig = plot_mixture(result, tmp_path / "mixture.png")
    assert (tmp_path / "mixture.png").read_bytes()[:8] == PNG_MAGIC
    assert fig.axes[0].get_xlabel() == names[0]
    assert len(summarize(idata)) > 0


# ---------------------------------------------------------------------------------------------
# (d) netCDF round trip


def test_netcdf_round_trip(fake_idata, em_idata, tmp_path) -> None:
    for name, idata in [("fake", fake_idata), ("em", em_idata)]:
        path = tmp_path / f"{name}.nc"
        idata.to_netcdf(str(path))
        back = az.from_netcdf(str(path))
        for group in idata.groups():
            for var in getattr(idata, group).data_vars:
                np.testing.assert_array_equal(
                    getattr(back, group)[var].values, getattr(idata, group)[var].values
                )
        assert back.posterior.attrs["method"] == idata.posterior.attrs["method"]
        assert back.posterior.attrs["point_estimate"] == idata.posterior.attrs["point_estimate"]
        assert list(back.posterior.coords["feature"].values) == ["eruptions", "waiting"]
    assert back.posterior.attrs["bic"] == pytest.approx(em_idata.posterior.attrs["bic"])


# ---------------------------------------------------------------------------------------------
# (e) summaries


def test_summary_two_chains_has_rhat_ess_and_no_warnings(fake, fake_idata) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = summarize(fake_idata)
    assert caught == []
    for column in ("mean", "sd", "r_hat", "ess_bulk", "ess_tail"):
        assert column in table.columns
    assert table["r_hat"].notna().all()
    assert "locs[0, eruptions]" in table.index
    assert "covariances[2, waiting, waiting]" in table.index
    # structural constants of corr_chol are left out, the free entry kept
    assert "corr_chol[0, eruptions, eruptions]" not in table.index
    assert "corr_chol[0, eruptions, waiting]" not in table.index
    assert "corr_chol[0, waiting, eruptions]" in table.index
    expected = fake["clean"]["locs"][:, :, 1, 1].mean().item()
    assert table.loc["locs[1, waiting]", "mean"] == pytest.approx(expected, abs=1e-3)
    # relabelled: the chains agree, so R-hat is near 1
    assert table.loc[table.index.str.startswith("locs"), "r_hat"].max() < 1.1


def test_summary_from_result_and_var_names(fake) -> None:
    table = summarize(fake["result"], var_names=["weights"])
    assert list(table.index) == ["weights[0]", "weights[1]", "weights[2]"]


def test_summary_one_chain_has_stats_only(fake) -> None:
    draws = {k: v[:1] for k, v in fake["result"].draws.items()}
    svi = replace(fake["result"], method="svi", draws=draws)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = summarize(svi)
    assert caught == []
    assert "r_hat" not in table.columns and "mean" in table.columns


def test_summary_point_estimate(em2, em_idata) -> None:
    table = summarize(em_idata)
    assert list(table.columns) == ["value", "method"]
    assert (table["method"] == "em point estimate").all()
    expected = _sorted_params(em2.params)
    assert table.loc["weights[1]", "value"] == pytest.approx(float(expected["weights"][1]))
    assert table.loc["locs[0, waiting]", "value"] == pytest.approx(float(expected["locs"][0, 1]))


# ---------------------------------------------------------------------------------------------
# (f) plots


def _check_png(path: Path) -> None:
    raw = path.read_bytes()
    assert raw[:8] == PNG_MAGIC
    assert len(raw) > 10_000, f"{path.name} is suspiciously small ({len(raw)} bytes)"


def test_save_plots_em(em2, em_idata, tmp_path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    written = save_plots(em2, em_idata, tmp_path / "em")
    assert [p.name for p in written] == ["mixture.png", "objective.png"]
    for path in written:
        _check_png(path)
    assert plt.get_fignums() == before  # nothing left open


def test_save_plots_draws(fake, fake_idata, tmp_path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    written = save_plots(fake["result"], fake_idata, tmp_path / "nuts")
    assert [p.name for p in written] == ["mixture.png", "trace.png", "posterior.png"]
    for path in written:
        _check_png(path)
    assert plt.get_fignums() == before


def test_plot_labels(em2, fake) -> None:
    fig = plot_mixture(em2)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("eruptions", "waiting")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 2 and all("weight" in t for t in legend)
    fig = plot_objective(em2)
    assert fig.axes[0].get_xlabel() == "iteration"
    assert "EM" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="no objective history"):
        plot_objective(fake["result"])


def test_plot_objective_svi_elbo(fake, tmp_path) -> None:
    t = np.arange(300)
    elbo = list(-5.0 - 2.0 * np.exp(-t / 50.0) + 0.05 * np.sin(t))
    svi = replace(fake["result"], method="svi", history={"elbo": elbo})
    fig = plot_objective(svi, tmp_path / "elbo.png")
    assert "ELBO" in fig.axes[0].get_title() and fig.axes[0].get_xlabel() == "step"
    _check_png(tmp_path / "elbo.png")


def test_trace_plots_refuse_point_estimate(em_idata) -> None:
    for plot in (plot_trace, plot_posterior):
        with pytest.raises(ValueError, match="EM gives a point estimate"):
            plot(em_idata)


# ---------------------------------------------------------------------------------------------
# (g) posterior predictive


def test_em_posterior_predictive(em2, em_idata) -> None:
    pp = em_idata.posterior_predictive["x"]
    assert pp.dims == ("chain", "draw", "obs", "feature")
    assert pp.shape == (1, 100, 272, 2)
    assert em_idata.posterior_predictive.attrs["point_estimate"] == 1
    x = em2.data.numpy()
    se = x.std(0) / np.sqrt(pp.shape[1] * pp.shape[2])
    simulated_mean = pp.values.reshape(-1, 2).mean(0)
    assert np.all(np.abs(simulated_mean - x.mean(0)) < 5 * se)
    # the replicates differ from each other (not one data set copied)
    assert not np.array_equal(pp.values[0, 0], pp.values[0, 1])


def test_draws_posterior_predictive_and_seed(fake, fake_idata) -> None:
    pp = fake_idata.posterior_predictive["x"]
    assert pp.shape == (N_CHAINS, 5, 272, 2)
    draws = fake_idata.posterior_predictive.coords["draw"].values
    assert draws[0] == 0 and draws[-1] == N_DRAWS - 1
    again = to_inference_data(fake["result"], num_predictive=10, seed=3, log_likelihood=False)
    assert "log_likelihood" not in again.groups()
    np.testing.assert_array_equal(again.posterior_predictive["x"].values, pp.values)


# ---------------------------------------------------------------------------------------------
# (h) LOO


def test_loo_on_draws(fake_idata) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = loo(fake_idata)
    assert caught == []
    assert result["pareto_k"].shape == (272,)
    assert np.isfinite(result["elpd_loo"])
    assert float(result["pareto_k"].max()) < 0.7
    # elpd_loo = lppd - p_loo, with lppd the in-sample log pointwise predictive density
    ll = fake_idata.log_likelihood["x"].values.reshape(-1, 272)
    lppd = float((logsumexp(ll, axis=0) - np.log(ll.shape[0])).sum())
    assert result["p_loo"] > 0
    assert result["elpd_loo"] == pytest.approx(lppd - result["p_loo"], rel=1e-9)


def test_loo_needs_log_likelihood(fake) -> None:
    idata = to_inference_data(fake["result"], num_predictive=0, log_likelihood=False)
    with pytest.raises(ValueError, match="log_likelihood"):
        loo(idata)


def test_loo_refuses_point_estimate(em_idata) -> None:
    with pytest.raises(ValueError, match="point estimate"):
        loo(em_idata)


# ---------------------------------------------------------------------------------------------
# fixed sites


def test_fixed_site_is_filled_in(faithful) -> None:
    """A fixed scale (the same for both components) is absent from draws and posterior but
    enters the covariances, the log-likelihood and the simulation."""
    x, _ = faithful
    x = (x - x.mean(0)) / x.std(0)
    fixed = torch.tensor([[0.5, 0.4], [0.5, 0.4]], dtype=torch.float64)
    model = GaussianMixture(2, "diag", priors={"scale": fixed})
    g = torch.Generator().manual_seed(5)
    locs = torch.tensor([[-1.2, -1.1], [0.7, 0.6]], dtype=torch.float64)
    draws = {
        "weights": torch.softmax(0.1 * torch.randn(2, 4, 2, generator=g, dtype=x.dtype), -1),
        "locs": locs + 0.05 * torch.randn(2, 4, 2, 2, generator=g, dtype=x.dtype),
    }
    perms = _random_perms(2, 2, 4, seed=7)
    switched = _permute(draws, perms)
    params = {"weights": torch.tensor([0.4, 0.6]), "locs": locs.flip(0)}
    result = FitResult(model, "nuts", x, params, switched, {}, True, 4, 0, 0.0)
    rel = relabel_result(result)
    assert rel.applied
    for name, value in draws.items():
        assert torch.equal(rel.draws[name], value)
    idata = to_inference_data(result, num_predictive=2)
    assert set(idata.posterior.data_vars) == {"weights", "locs", "covariances"}
    np.testing.assert_allclose(
        idata.posterior["covariances"].values[1, 2, 0], np.diag(fixed[0].numpy() ** 2)
    )
    c, s = 1, 3
    w, mu = switched["weights"][c, s].numpy(), switched["locs"][c, s].numpy()
    expected = logsumexp(
        [
            np.log(w[k]) + stats.norm(mu[k], fixed[k].numpy()).logpdf(x.numpy()).sum(1)
            for k in (0, 1)
        ],
        axis=0,
    )
    np.testing.assert_allclose(idata.log_likelihood["x"].values[c, s], expected, rtol=1e-10)
    assert idata.posterior_predictive["x"].shape == (2, 1, 272, 2)  # 2 data sets over 2 chains
