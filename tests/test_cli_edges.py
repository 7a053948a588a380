"""The command line at its edges: ``--key`` for npz data, EM standard errors in the outputs,
and refusals (exit status exactly 2, one line naming the problem) for options that do not
apply and for runs that would not fit in memory.

References are independent of the code under test: NumPy's own reading of the npz array,
:func:`~ppl_models.infer.standard_errors.compute_standard_errors` run again on the saved fit,
and the closed-form standard error of a Gaussian mean, :math:`\\hat\\sigma / \\sqrt N` with the
maximum-likelihood :math:`\\hat\\sigma`.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from ppl_models._arviz import az
from ppl_models.cli import main
from ppl_models.data import load
from ppl_models.diagnostics import summarize, to_inference_data
from ppl_models.infer import fit_em
from ppl_models.infer.resources import ENV_VAR
from ppl_models.infer.result import FitResult
from ppl_models.infer.standard_errors import compute_standard_errors
from ppl_models.models import GaussianMixture

QUICK = ["--quiet", "--no-plots"]


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "two.npz"
    first = rng.normal(size=(40, 2))
    second = np.concatenate([rng.normal(-3, 1, (60, 3)), rng.normal(3, 1, (60, 3))])
    np.savez(path, first=first, second=second)
    return path, first, second


# ------------------------------------------------------------------------------ --key
def test_key_picks_the_npz_array(tmp_path, npz):
    path, _, second = npz
    out = tmp_path / "o"
    assert main(["fit", "gmm", "--data", str(path), "--key", "second", "--out", str(out),
                 "--no-standard-errors", *QUICK]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n_samples"], metrics["n_features"]) == second.shape
    assert metrics["columns"] == ["second[0]", "second[1]", "second[2]"]
    saved = FitResult.load(out / "fit")
    np.testing.assert_array_equal(saved.data.numpy(), second)


@pytest.mark.parametrize("command", [["fit", "gmm"], ["select-k"], ["compare-guides", "gmm"]])
def test_a_missing_key_is_refused_with_the_keys_present(tmp_path, npz, capsys, command):
    path, _, _ = npz
    code = main([*command, "--data", str(path), "--key", "third", "--out", str(tmp_path / "o"),
                 "--quiet"])
    assert code == 2
    _one_line_error(capsys, "'third'", "first", "second")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["fit", "gmm"], ["select-k"], ["compare-guides", "gmm"]])
def test_a_key_for_a_csv_file_is_refused(tmp_path, capsys, command):
    code = main([*command, "--key", "x", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    _one_line_error(capsys, "key='x'", ".npz")


def test_an_npz_with_several_arrays_needs_a_key(tmp_path, npz, capsys):
    path, _, _ = npz
    assert main(["fit", "gmm", "--data", str(path), "--out", str(tmp_path / "o"), *QUICK]) == 2
    _one_line_error(capsys, "2 arrays", "key")


# ------------------------------------------------------------------- standard errors
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--method", "svi", "--standard-errors"], ["--standard-errors", "em only"]),
        (["--method", "nuts", "--standard-errors"], ["--standard-errors", "em only"]),
        (["--method", "svi", "--bootstrap", "5"], ["--bootstrap", "em only"]),
        (["--method", "nuts", "--bootstrap", "5"], ["--bootstrap", "em only"]),
        (["--bootstrap", "5", "--no-standard-errors"], ["--bootstrap", "contradicts"]),
    ],
)
def test_standard_error_options_that_do_not_apply_are_refused(tmp_path, capsys, extra, words):
    out = tmp_path / "o"
    assert main(["fit", "gmm", *extra, "--out", str(out), *QUICK]) == 2
    _one_line_error(capsys, *words)
    assert not out.exists()


@pytest.mark.parametrize("b", ["1", "0", "two"])
def test_bootstrap_needs_at_least_two_refits(tmp_path, capsys, b):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "gmm", "--bootstrap", b, "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    _one_line_error(capsys, "--bootstrap", "at least 2")


def _sorted_by_first_location(sites: dict) -> dict:
    """The standard errors with components in the order of their first location coordinate
    (the order the summary table uses)."""
    order = np.argsort(sites["locs"]["estimate"][:, 0].numpy())
    return {name: {k: v[order] for k, v in table.items()} for name, table in sites.items()}


@pytest.mark.parametrize("extra", [["--standard-errors"], ["--bootstrap", "4"]],
                         ids=["observed", "bootstrap"])
def test_summary_standard_errors_match_an_independent_computation(tmp_path, extra):
    out = tmp_path / "o"
    assert main(["fit", "gmm", "--out", str(out), *extra, *QUICK]) == 0
    table = pd.read_csv(out / "summary.csv", index_col=0)
    saved = FitResult.load(out / "fit")
    method = "bootstrap" if "--bootstrap" in extra else "observed_information"
    again = compute_standard_errors(saved, method, n_boot=4, seed=0)
    sites = _sorted_by_first_location(again.sites)
    columns = ["eruptions", "waiting"]
    for k in range(2):
        assert table.loc[f"weights[{k}]", "se"] == pytest.approx(
            float(sites["weights"]["se"][k]), rel=1e-8)
        for j, c in enumerate(columns):
            row = table.loc[f"locs[{k}, {c}]"]
            assert row["value"] == pytest.approx(float(sites["locs"]["estimate"][k, j]))
            assert row["se"] == pytest.approx(float(sites["locs"]["se"][k, j]), rel=1e-8)
            assert row["lower_95"] == pytest.approx(float(sites["locs"]["lower"][k, j]),
                                                    rel=1e-8)
            assert row["upper_95"] == pytest.approx(float(sites["locs"]["upper"][k, j]),
                                                    rel=1e-8)
            for i, r in enumerate(columns):
                assert table.loc[f"covariances[{k}, {c}, {r}]", "se"] == pytest.approx(
                    float(sites["covariances"]["se"][k, j, i]), rel=1e-8)
    expected = "asymptotic Wald" if method == "observed_information" else "bootstrap"
    assert table["interval"].str.contains(expected).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["standard_errors"]["method"] == method
    assert metrics["standard_errors"]["asymptotic"] is (method == "observed_information")


def test_k1_standard_errors_are_the_gaussian_closed_form(tmp_path):
    rng = np.random.default_rng(7)
    n = 300
    x = rng.multivariate_normal([2.0, -1.0], [[1.5, 0.4], [0.4, 0.8]], size=n)
    path = tmp_path / "g.csv"
    pd.DataFrame(x, columns=["a", "b"]).to_csv(path, index=False)
    out = tmp_path / "o"
    assert main(["fit", "gmm", "--data", str(path), "--components", "1", "--standard-errors",
                 "--out", str(out), *QUICK]) == 0
    table = pd.read_csv(out / "summary.csv", index_col=0)
    sigma = x.std(axis=0, ddof=0)  # the maximum-likelihood sigma
    for j, c in enumerate(["a", "b"]):
        row = table.loc[f"locs[0, {c}]"]
        assert row["value"] == pytest.approx(x[:, j].mean(), rel=1e-10)
        # reg_covar (relative, 1e-6 of the variance) moves sigma by 5e-7 of itself
        assert row["se"] == pytest.approx(sigma[j] / np.sqrt(n), rel=1e-5)
        assert row["lower_95"] == pytest.approx(
            x[:, j].mean() - 1.959963985 * sigma[j] / np.sqrt(n), rel=1e-5)
        assert table.loc[f"scale[0, {c}]", "se"] == pytest.approx(
            sigma[j] / np.sqrt(2 * n), rel=1e-5)


def test_standard_errors_in_the_arviz_file(tmp_path):
    out = tmp_path / "o"
    assert main(["fit", "gmm", "--out", str(out), *QUICK]) == 0  # on by default here
    table = pd.read_csv(out / "summary.csv", index_col=0)
    idata = az.from_netcdf(str(out / "inference_data.nc"))
    group = idata["standard_errors"]
    assert group.attrs["asymptotic"] == 1 and group.attrs["level"] == 0.95
    se = group["locs"].sel(statistic="se")
    for k in range(2):
        for c in ("eruptions", "waiting"):
            assert float(se.sel(component=k, feature=c)) == pytest.approx(
                table.loc[f"locs[{k}, {c}]", "se"], rel=1e-12)
            # the group follows the posterior's (relabelled) component order
            assert float(group["locs"].sel(component=k, feature=c, statistic="estimate")) == (
                pytest.approx(float(idata.posterior["locs"].sel(component=k, feature=c)
                                    .squeeze())))
    assert "standard_errors" not in idata.posterior.attrs
    with pytest.warns(RuntimeWarning):  # one draw: ArviZ's sd is undefined, but it runs
        summary = az.summary(idata, var_names=["locs"])
    assert len(summary) == 4


def test_standard_errors_follow_the_relabelled_components():
    x, columns = load("faithful")
    start = {"weights": torch.tensor([0.64, 0.36]),
             "locs": torch.tensor([[4.3, 80.0], [2.0, 54.0]]),
             "covariances": torch.stack([torch.diag(torch.tensor([0.2, 36.0]))] * 2)}
    result = fit_em(GaussianMixture(2), x, init=start, columns=columns, progress=False,
                    standard_errors=True)
    assert result.params["locs"][0, 0] > result.params["locs"][1, 0]  # not in sorted order
    idata = to_inference_data(result, num_predictive=0, num_prior=0, log_likelihood=False)
    direct = compute_standard_errors(result).sites
    group = idata["standard_errors"]
    for k_sorted, k_fit in ((0, 1), (1, 0)):
        for name in ("weights", "locs", "scale", "covariances"):
            np.testing.assert_allclose(
                group[name].sel(component=k_sorted, statistic="se").values,
                direct[name]["se"][k_fit].numpy(), rtol=1e-10)
        np.testing.assert_allclose(
            group["locs"].sel(component=k_sorted, statistic="estimate").values,
            idata.posterior["locs"].sel(component=k_sorted).values.squeeze(), rtol=1e-12)
    table = summarize(idata)
    assert table.loc["weights[0]", "se"] == pytest.approx(float(direct["weights"]["se"][1]))


def test_standard_errors_off_and_skipped_are_stated(tmp_path):
    out = tmp_path / "o"
    assert main(["fit", "gmm", "--no-standard-errors", "--out", str(out), *QUICK]) == 0
    table = pd.read_csv(out / "summary.csv", index_col=0)
    assert list(table.columns) == ["value", "method"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "--no-standard-errors" in metrics["standard_errors"]


# ------------------------------------------------------------------------------ memory
def test_a_fit_over_the_memory_limit_is_refused_before_it_starts(tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setenv(ENV_VAR, "10k")
    out = tmp_path / "o"
    assert main(["fit", "gmm", "--out", str(out), *QUICK]) == 2
    _one_line_error(capsys, "needs about", "limit is 10.0 kB", ENV_VAR)
    assert not out.exists()


def test_a_bad_memory_limit_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "lots")
    assert main(["fit", "gmm", "--out", str(tmp_path / "o"), *QUICK]) == 2
    _one_line_error(capsys, ENV_VAR, "'lots'")


def test_gmvae_with_ten_thousand_labels_ends_in_one_line(tmp_path, capsys, monkeypatch):
    # Before: a 41 GB allocation and a traceback from PyTorch's allocator.
    monkeypatch.setenv(ENV_VAR, "8G")
    out = tmp_path / "o"
    assert main(["fit", "vae", "--prior", "gmvae", "--components", "10000", "--out", str(out),
                 "--quiet"]) == 2
    err = _one_line_error(capsys, "10000 labels", "limit is 8.0 GB", "p(z | y)")
    assert "GB of memory" in err
    assert not out.exists()


def test_select_k_with_a_billion_values_ends_at_once(tmp_path, capsys):
    start = time.perf_counter()
    with pytest.raises(SystemExit) as stop:
        main(["select-k", "--ks", "1-999999999", "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    assert time.perf_counter() - start < 5.0
    _one_line_error(capsys, "--ks", "999999999 values", "at most 1000")


def test_select_k_refuses_k_above_n_before_fitting(tmp_path, capsys):
    start = time.perf_counter()
    assert main(["select-k", "--ks", "1-300", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert time.perf_counter() - start < 5.0
    _one_line_error(capsys, "K=300", "number of observations (272)")


def test_select_k_over_the_memory_limit_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "100k")
    assert main(["select-k", "--ks", "1-3", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    _one_line_error(capsys, "needs about", "limit is 100.0 kB")

