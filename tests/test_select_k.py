"""Choosing K: BIC/AIC against scikit-learn, PSIS-LOO against plain importance sampling, the
choice on data simulated from three components, and the ``select-k`` command."""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_models._arviz import az
from ppl_models.cli.select_k import add_subcommand, parse_ks, run
from ppl_models.infer import fit_em, fit_svi
from ppl_models.models import GaussianMixture
from ppl_models.workflows.select_k import (
    check_ks,
    plot_selection,
    posterior_loo,
    select_components,
)

MEANS = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
COVS = np.array([[[1.0, 0.3], [0.3, 0.8]], [[0.6, -0.2], [-0.2, 1.0]], [[1.2, 0.0], [0.0, 0.5]]])


def three_clusters(n: int, seed: int = 0) -> np.ndarray:
    """``n`` points from a well-separated 3-component mixture (weights 0.3, 0.3, 0.4)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, n, p=[0.3, 0.3, 0.4])
    return np.stack([rng.multivariate_normal(MEANS[k], COVS[k]) for k in labels])


@pytest.fixture(scope="module")
def selection() -> tuple[np.ndarray, pd.DataFrame]:
    x = three_clusters(300)
    # 300 steps from EM's optimum reach p_loo within ~5% of NUTS's here (17.4 vs 18.0 at K=3).
    table = select_components(x, range(1, 6), num_steps=300, lr=0.03, num_draws=300,
                              progress=False)
    return x, table


def test_bic_and_loo_pick_three_components(selection):
    _, table = selection
    print(f"\n{table.round(2).to_string()}\n{table.attrs}")
    assert list(table.index) == [1, 2, 3, 4, 5]
    assert table.attrs["best"]["bic"] == 3
    assert table.attrs["best"]["loo"] == 3
    assert table.loc[3, "best_bic"] and table.loc[3, "best_loo"]
    assert table["best_bic"].sum() == table["best_loo"].sum() == table["best_elbo"].sum() == 1
    # One and two components are far worse by every criterion (tens of standard errors).
    for k in (1, 2):
        assert table.loc[k, "bic"] > table.loc[3, "bic"] + 100
        gap = table.loc[3, "elpd_loo"] - table.loc[k, "elpd_loo"]
        assert gap > 5 * table.loc[k, "elpd_diff_se"]
        assert table.loc[k, "elbo"] < table.loc[3, "elbo"] - 50


def test_bic_and_aic_equal_scikit_learn_at_the_same_fits(selection):
    x, table = selection
    for k in table.index:
        # The same EM fit as in select_components (same restarts and seed), handed to
        # scikit-learn, which computes the likelihood and the parameter count on its own.
        em = fit_em(GaussianMixture(int(k)), torch.as_tensor(x), n_init=5, progress=False)
        state = em.model.em_state(em.params)
        sk = SkGaussianMixture(int(k), covariance_type="full")
        sk.weights_ = state["weights"].numpy()
        sk.means_ = state["locs"].numpy()
        sk.covariances_ = state["covariances"].numpy()
        sk.precisions_cholesky_ = np.linalg.inv(np.linalg.cholesky(sk.covariances_)).transpose(
            0, 2, 1
        )
        assert table.loc[k, "bic"] == pytest.approx(sk.bic(x), rel=1e-9)
        assert table.loc[k, "aic"] == pytest.approx(sk.aic(x), rel=1e-9)
    # And where the optimum is unambiguous, scikit-learn's own fit agrees.
    for k in (1, 2, 3):
        reference = SkGaussianMixture(k, n_init=10, random_state=0).fit(x)
        assert table.loc[k, "bic"] == pytest.approx(reference.bic(x), rel=1e-5)


def test_posterior_loo_matches_independent_importance_sampling():
    x = torch.as_tensor(three_clusters(80, seed=1), dtype=torch.float32)
    model = GaussianMixture(3, "full")
    # The k-means++ start this Monte Carlo comparison was calibrated on (the default k-means
    # start reaches the same optimum with the components in another order).
    em = fit_em(model, x, n_init=3, progress=False, init="kmeans++")
    result = fit_svi(model, x, guide="full_rank", num_steps=400, lr=0.02,
                     init=dict(em.params), num_draws=400, progress=False)
    elpd = posterior_loo(result)
    # Pointwise log p(x_n | theta_s) from the draws with scipy, labels summed out by hand.
    draws = {k: v.reshape(-1, *v.shape[2:]).double().numpy() for k, v in result.draws.items()}
    log_lik = np.empty((400, x.shape[0]))
    for s in range(400):
        sd = draws["scale"][s]
        cov = sd[:, :, None] * (draws["corr_chol"][s] @ draws["corr_chol"][s].transpose(0, 2, 1))
        cov = cov * sd[:, None, :]
        dens = [stats.multivariate_normal(draws["locs"][s, j], cov[j]).logpdf(x.numpy())
                for j in range(3)]
        log_lik[s] = logsumexp(np.log(draws["weights"][s])[:, None] + np.stack(dens), axis=0)
    lppd = np.sum(logsumexp(log_lik, axis=0) - np.log(400))
    # The same PSIS from ArviZ on this independent log-likelihood: the conversion (labels
    # summed out, relabelling, draw order, dtype) must not change a thing.
    reference = az.from_dict(posterior={"locs": draws["locs"][None]},
                             log_likelihood={"x": log_lik[None]})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        expected = az.loo(reference, pointwise=True)
    assert elpd.elpd_loo == pytest.approx(expected.elpd_loo, abs=0.02)
    assert elpd.se == pytest.approx(expected.se, rel=1e-3)
    np.testing.assert_allclose(elpd.pareto_k.values, expected.pareto_k.values, atol=0.02)
    # Plain importance sampling LOO (Gelfand, Dey & Chang, 1992): p(x_n | x_-n) is the
    # harmonic mean of p(x_n | theta_s). Where the Pareto k is small PSIS barely changes the
    # weights, so the two agree observation by observation.
    elpd_is = np.log(400) - logsumexp(-log_lik, axis=0)
    k = elpd.pareto_k.values
    print(f"\nPSIS elpd {elpd.elpd_loo:.3f} (k max {k.max():.2f}), IS {elpd_is.sum():.3f}, "
          f"lppd {lppd:.3f}")
    assert np.mean(k < 0.5) > 0.8
    np.testing.assert_allclose(elpd.loo_i.values[k < 0.5], elpd_is[k < 0.5], atol=0.02)
    assert elpd.elpd_loo < lppd  # p_loo > 0
    assert elpd.p_loo == pytest.approx(lppd - elpd.elpd_loo, abs=0.05)
    assert elpd.se > 0


def test_plot_selection_draws_one_panel_per_criterion(selection, tmp_path):
    _, table = selection
    fig = plot_selection(table, tmp_path / "selection.png")
    assert len(fig.axes) == 3
    assert (tmp_path / "selection.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0-3", "at least 1"),
        ("3-1", "decreasing"),
        ("a", "not a whole number"),
        ("2,x", "not a whole number"),
        ("", "empty"),
        ("1-3,2", "more than once"),
    ],
)
def test_bad_ks_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_ks(text)


def test_ks_are_parsed_and_checked_against_the_data():
    assert parse_ks("1-6") == [1, 2, 3, 4, 5, 6]
    assert parse_ks("4,1,2") == [1, 2, 4]
    assert parse_ks(" 1-3, 5 ") == [1, 2, 3, 5]
    with pytest.raises(ValueError, match="larger than the number of observations"):
        check_ks([1, 2, 11], n_obs=10)
    with pytest.raises(ValueError, match="larger than the number of observations"):
        select_components(three_clusters(10), [1, 11], progress=False)
    with pytest.raises(ValueError, match="unknown criteria"):
        select_components(three_clusters(10), [1, 2], criteria=("bic", "waic"))
    with pytest.raises(ValueError, match="every K in ks must be a positive integer; got 0"):
        select_components(three_clusters(10), [0, 1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppl-models")
    add_subcommand(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_writes_table_metrics_and_plot(tmp_path, capsys):
    path = tmp_path / "three.csv"
    np.savetxt(path, three_clusters(120, seed=2), delimiter=",", header="a,b", comments="")
    out = tmp_path / "run"
    args = _parser().parse_args(["select-k", "--data", str(path), "--ks", "1-3", "--steps",
                                 "150", "--draws", "100", "--out", str(out)])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "elpd_loo" in printed and "best bic: K=" in printed
    table = pd.read_csv(out / "selection.csv", index_col="k")
    assert list(table.index) == [1, 2, 3]
    for column in ("bic", "aic", "elpd_loo", "elpd_loo_se", "p_loo", "pareto_k_max", "elbo",
                   "best_bic", "best_loo", "best_elbo"):
        assert column in table, column
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ks"] == [1, 2, 3] and metrics["n_obs"] == 120
    assert set(metrics["best"]) == {"bic", "loo", "elbo"}
    assert metrics["best"]["bic"] == int(table.index[table["best_bic"]][0])
    assert metrics["table"]["2"]["bic"] == pytest.approx(table.loc[2, "bic"])
    assert (out / "selection.png").stat().st_size > 0


@pytest.mark.parametrize("ks", ["0-3", "3-1", "a"])
def test_cli_refuses_bad_ks_with_a_usage_error(ks, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["select-k", "--ks", ks])
    assert exit_info.value.code == 2
    assert "--ks" in capsys.readouterr().err


def test_cli_refuses_more_components_than_observations(tmp_path):
    path = tmp_path / "small.csv"
    np.savetxt(path, three_clusters(5), delimiter=",", header="a,b", comments="")
    args = _parser().parse_args(["select-k", "--data", str(path), "--ks", "1-6", "--quiet",
                                 "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match=r"K=6 is larger than the number of observations \(5\)"):
        run(args)
