"""Issue 11 on the command line: one meaning per option, defaults shown, inapplicable options
refused, memberships and information criteria written, NUTS sample statistics for ArviZ."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_models._arviz import az
from ppl_models.cli import build_parser, main
from ppl_models.cli.fit_mixture import METHOD_OPTIONS
from ppl_models.data import load
from ppl_models.infer import fit_em, fit_mcmc, fit_svi


@pytest.fixture(scope="module")
def nuts_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nuts") / "run"
    status = main(["fit", "gmm", "--method", "nuts", "--num-samples", "40", "--warmup", "40",
                   "--chains", "2", "--standardize", "--no-plots", "--quiet",
                   "--out", str(out)])
    assert status == 0
    return out


def test_nuts_file_has_sample_stats_for_arviz(nuts_run):
    idata = az.from_netcdf(str(nuts_run / "inference_data.nc"))
    stats = idata.sample_stats
    for name in ("diverging", "energy", "tree_depth", "step_size", "acceptance_rate"):
        assert stats[name].shape == (2, 40), name
    metrics = json.loads((nuts_run / "metrics.json").read_text())
    # Divergences per chain as Pyro's own MCMC.diagnostics() counted them.
    assert stats["diverging"].sum("draw").values.tolist() == metrics["divergences"]
    accept = stats["acceptance_rate"].values
    assert np.all((accept >= 0) & (accept <= 1)) and accept.mean() > 0.3
    depth = stats["tree_depth"].values
    assert np.all(depth >= 1) and np.all(depth == np.round(depth))
    # After warm-up the step size is frozen: one value per chain.
    assert np.all(stats["step_size"].std("draw").values == 0)
    # Energy is a Hamiltonian (potential + kinetic >= potential), and BFMI needs it to vary.
    bfmi = az.bfmi(idata)
    assert bfmi.shape == (2,) and np.all(np.isfinite(bfmi)) and np.all(bfmi > 0)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ppl_models.diagnostics.plots import _arviz_matplotlib_compat

    with _arviz_matplotlib_compat():  # one matplotlib deprecation inside ArviZ
        az.plot_energy(idata)
        az.plot_ppc(idata, num_pp_samples=5)
    plt.close("all")


def test_nuts_file_summary_has_no_nan_rows(nuts_run):
    idata = az.from_netcdf(str(nuts_run / "inference_data.nc"))
    table = az.summary(idata)
    assert not table.isna().any().any(), table[table.isna().any(axis=1)]
    # The correlation Cholesky keeps its two varying entries per component (D = 2): L[1, 0]
    # is the correlation, read independently from the covariances, and L[1, 1] its
    # sqrt(1 - rho^2); the unit L[0, 0] and zero L[0, 1] are left out.
    corr = idata.posterior["corr_chol"]
    assert corr.dims == ("chain", "draw", "component", "corr_chol_entry")
    assert corr.coords["corr_chol_entry"].values.tolist() == ["waiting, eruptions",
                                                                "waiting, waiting"]
    cov = idata.posterior["covariances"].values
    rho = cov[..., 1, 0] / np.sqrt(cov[..., 0, 0] * cov[..., 1, 1])
    np.testing.assert_allclose(corr.values[..., 0], rho, atol=1e-6)
    np.testing.assert_allclose(corr.values[..., 1], np.sqrt(1 - rho**2), atol=1e-6)


def test_nuts_metrics_have_bic_aic_waic_loo(nuts_run):
    metrics = json.loads((nuts_run / "metrics.json").read_text())
    for key in ("bic", "aic", "waic", "loo", "p_waic", "p_loo"):
        assert math.isfinite(metrics[key]), key
    # Full-covariance GMM, K=2, D=2: 1 weight + 4 means + 4 scales + 2 correlations.
    assert metrics["n_parameters"] == 11
    n = metrics["n_samples"]
    assert math.isclose(metrics["bic"] - metrics["aic"], 11 * (math.log(n) - 2), rel_tol=1e-9)
    # WAIC and LOO are close on this well-specified model, both near AIC.
    assert abs(metrics["waic"] - metrics["loo"]) < 5
    assert abs(metrics["waic"] - metrics["aic"]) < 30


def test_assignments_match_scikit_learn_on_old_faithful(tmp_path):
    out = tmp_path / "em"
    assert main(["fit", "gmm", "--out", str(out), "--quiet", "--no-plots"]) == 0
    table = pd.read_csv(out / "assignments.csv")
    assert list(table.columns) == ["row", "p_0", "p_1", "label", "probability"]
    probs = table[["p_0", "p_1"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(table["label"], probs.argmax(1))
    x, _ = load("faithful")
    reference = SkGaussianMixture(2, n_init=5, random_state=0).fit(x.double().numpy())
    theirs = reference.predict(x.double().numpy())
    confusion = np.zeros((2, 2))
    np.add.at(confusion, (table["label"].to_numpy(), theirs), 1)
    rows, cols = linear_sum_assignment(-confusion)
    assert confusion[rows, cols].sum() / len(theirs) >= 0.99
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isclose(metrics["bic"], reference.bic(x.double().numpy()), rel_tol=1e-5)
    assert math.isclose(metrics["aic"], reference.aic(x.double().numpy()), rel_tol=1e-5)


def _subparsers(parser):
    return next(a for a in parser._actions if a.dest in ("command", "model")).choices


def _parser(*names):
    parser = build_parser()
    for name in names:
        parser = _subparsers(parser)[name]
    return parser


@pytest.mark.parametrize("names", [("fit", "gmm"), ("fit", "student_t_mixture"),
                                   ("fit", "vae"), ("compare-guides",), ("select-k",)])
def test_help_shows_every_default(names):
    parser = _parser(*names)
    text = parser.format_help()
    for action in parser._actions:
        if action.dest == "help" or not action.option_strings:
            continue
        assert "default" in (action.help or ""), action.option_strings
        if names[-1] == "gmm" and action.dest in METHOD_OPTIONS:
            assert f"default {METHOD_OPTIONS[action.dest][2]}" in action.help
        elif isinstance(action.default, int | float | str) and action.default is not False:
            shown = f"{action.default:g}" if isinstance(action.default, float) else str(
                action.default)
            assert shown in parser._get_formatter()._expand_help(action), action.option_strings
    assert "%(default)" not in text


def test_method_option_defaults_are_the_python_api_defaults():
    api = {
        "max_iter": (fit_em, "max_iter"), "n_init": (fit_em, "n_init"),
        "num_steps": (fit_svi, "num_steps"), "guide": (fit_svi, "guide"),
        "num_samples": (fit_mcmc, "num_samples"), "warmup": (fit_mcmc, "warmup_steps"),
        "chains": (fit_mcmc, "num_chains"),
    }
    assert set(api) == set(METHOD_OPTIONS)
    for dest, (function, name) in api.items():
        default = inspect.signature(function).parameters[name].default
        if dest == "guide":  # fit_svi documents None as "mean_field" for a mixture
            assert default is None
            default = "mean_field"
        assert METHOD_OPTIONS[dest][2] == default


@pytest.mark.parametrize(
    ("model", "method", "extra"),
    [
        ("gmm", "em", ["--guide", "map"]),
        ("gmm", "em", ["--num-steps", "5"]),
        ("gmm", "em", ["--num-samples", "5"]),
        ("gmm", "em", ["--warmup", "5"]),
        ("gmm", "em", ["--chains", "2"]),
        ("gmm", "svi", ["--warmup", "5"]),
        ("gmm", "svi", ["--chains", "2"]),
        ("gmm", "svi", ["--n-init", "2"]),
        ("gmm", "svi", ["--max-iter", "5"]),
        ("gmm", "nuts", ["--n-init", "2"]),
        ("gmm", "nuts", ["--guide", "map"]),
        ("gmm", "nuts", ["--num-steps", "5"]),
        ("gmm", "em", ["--df", "3"]),
        ("gmm", "em", ["--steps", "5"]),
    ],
)
def test_inapplicable_option_is_refused_in_one_line(tmp_path, capsys, model, method, extra):
    out = tmp_path / "never"
    argv = ["fit", model, "--method", method, "--out", str(out), "--quiet", *extra]
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert extra[0] in err
    assert not out.exists()


def test_label_column_is_kept_out_and_scored(tmp_path):
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    labels = np.repeat([0, 1, 2], 60)
    x = centres[labels] + rng.normal(size=(180, 2))
    path = tmp_path / "blobs.csv"
    pd.DataFrame({"a": x[:, 0], "truth": labels, "b": x[:, 1]}).to_csv(path, index=False)
    out = tmp_path / "o"
    assert main(["fit", "gmm", "--data", str(path), "--label-column", "truth",
                 "--components", "3", "--n-init", "3", "--out", str(out), "--quiet",
                 "--no-plots"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["columns"] == ["a", "b"] and metrics["n_features"] == 2
    # The mixture separates the blobs; an independent count of the matched labels agrees.
    table = pd.read_csv(out / "assignments.csv")
    confusion = np.zeros((3, 3))
    np.add.at(confusion, (table["label"].to_numpy(), labels), 1)
    rows, cols = linear_sum_assignment(-confusion)
    assert math.isclose(metrics["cluster_accuracy"], confusion[rows, cols].sum() / 180)
    assert metrics["cluster_accuracy"] >= 0.98


def test_label_column_must_exist(tmp_path, capsys):
    assert main(["fit", "gmm", "--label-column", "nope", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize("df", [4.0, 1.5])
def test_student_t_reports_df_and_implied_covariances(tmp_path, df):
    out = tmp_path / "t"
    assert main(["fit", "student_t_mixture", "--df", str(df), "--out", str(out), "--quiet",
                 "--no-plots", "--max-iter", "20", "--standardize"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["df"] == df
    scale = np.array(metrics["scale_matrices"])
    assert scale.shape == (2, 2, 2)
    if df > 2:
        # Covariance of a multivariate t: Sigma * nu / (nu - 2); nu = 4 doubles the scale.
        np.testing.assert_allclose(np.array(metrics["implied_covariances"]), 2.0 * scale)
    else:
        assert "undefined" in metrics["implied_covariances"]


def test_nuts_prints_its_work_estimate(tmp_path, capsys):
    assert main(["fit", "gmm", "--method", "nuts", "--num-samples", "5", "--warmup", "5",
                 "--chains", "1", "--no-plots", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "1 chain(s)" in err and "5 warm-up + 5 draws" in err


def test_mixture_plot_names_the_features_it_shows(tmp_path, capsys):
    rng = np.random.default_rng(1)
    path = tmp_path / "three.csv"
    pd.DataFrame(rng.normal(size=(60, 3)), columns=["u", "v", "w"]).to_csv(path, index=False)
    assert main(["fit", "gmm", "--data", str(path), "--out", str(tmp_path / "o")]) == 0
    assert "shows the first two features, u and v, of 3" in capsys.readouterr().out
    from ppl_models.diagnostics import plot_mixture
    from ppl_models.infer.result import FitResult

    figure = plot_mixture(FitResult.load(tmp_path / "o" / "fit"))
    assert "showing u and v of 3 features" in figure.axes[0].get_title()


def test_saved_nuts_fit_round_trips_its_sample_stats(nuts_run):
    from ppl_models.diagnostics import to_inference_data
    from ppl_models.infer.result import FitResult

    saved = az.from_netcdf(str(nuts_run / "inference_data.nc"))
    again = to_inference_data(FitResult.load(nuts_run / "fit"), num_predictive=0, num_prior=0)
    for name in saved.sample_stats.data_vars:
        np.testing.assert_array_equal(again.sample_stats[name].values,
                                      saved.sample_stats[name].values)
