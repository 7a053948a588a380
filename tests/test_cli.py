"""The ``ppl-models`` command end to end, and its one-line errors."""

from __future__ import annotations

import importlib
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_models.cli import build_parser, main
from ppl_models.cli.fit import with_default_model
from ppl_models.data import load
from ppl_models.models import MIXTURES, MODELS, GaussianMixture


def test_fit_gmm_em_on_old_faithful_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "gmm", "--out", str(out), "--n-init", "3", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("model", "method", "n_samples", "n_features", "n_components",
                "mean_log_likelihood", "n_iter", "converged", "fit_seconds", "bic", "aic"):
        assert key in metrics, key
    assert (metrics["model"], metrics["method"]) == ("gmm", "em")
    assert (metrics["n_samples"], metrics["n_features"], metrics["n_components"]) == (272, 2, 2)
    # Independent reference: scikit-learn's best of 10 restarts on the same data.
    x, _ = load("faithful")
    reference = SkGaussianMixture(2, n_init=10, random_state=0).fit(x.double().numpy())
    assert math.isclose(metrics["mean_log_likelihood"], reference.score(x.double().numpy()),
                        abs_tol=1e-4)
    assert math.isclose(metrics["bic"], reference.bic(x.double().numpy()), rel_tol=1e-5)
    assert metrics["converged"] is True and metrics["fit_seconds"] > 0
    for name in ("summary.csv", "inference_data.nc", "mixture.png", "objective.png"):
        assert (out / name).stat().st_size > 0, name
    assert capsys.readouterr().out == ""  # --quiet


def test_console_script_runs_with_no_options(tmp_path):
    # The installed command with defaults: bundled Old Faithful, EM, K=2.
    exe = [sys.executable, "-m", "ppl_models"]
    done = subprocess.run([*exe, "fit", "--out", str(tmp_path / "o")], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "locs" in done.stdout and "mean log-likelihood" in done.stdout
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["n_samples"] == 272


@pytest.mark.parametrize(
    ("method", "extra"),
    [("svi", ["--num-steps", "30", "--guide", "mean_field"]),
     ("nuts", ["--num-samples", "10", "--warmup", "10", "--chains", "2"])],
)
def test_fit_with_other_methods(tmp_path, method, extra):
    out = tmp_path / method
    assert main(["fit", "gmm", "--method", method, "--out", str(out), "--quiet",
                 "--no-plots", *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and math.isfinite(metrics["mean_log_likelihood"])
    assert (out / "inference_data.nc").stat().st_size > 0
    if method == "svi":  # the numbers behind the converged flag go with it
        assert metrics["convergence"]["converged"] == metrics["converged"]
        assert metrics["convergence"]["window"] >= 1


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda p: ["--data", _write(p, "nan.csv", "a,b\n1,2\nnan,3\n4,5\n")], "NaN"),
        (lambda p: ["--data", _write(p, "text.csv", "a,b\n1,x\n2,y\n3,z\n")], "not numeric"),
        (lambda p: ["--data", _write(p, "empty.csv", "a,b\n")], "empty|no rows"),
        (lambda p: ["--data", str(p / "missing.csv")], "missing.csv"),
        (lambda p: ["--data", "faithful", "--columns", "eruptions,height"], "height"),
        (lambda p: ["--data", _write(p, "three.csv", "a,b\n1,2\n3,4\n5,7\n"),
                    "--components", "5"], "larger than the number of observations"),
        (lambda p: ["--components", "0"], "must be a positive integer; got 0"),
        (lambda p: ["--components", "two"], "must be a positive integer; got 'two'"),
        (lambda p: ["--method", "gibbs"], "invalid choice"),
    ],
)
def test_bad_input_gives_one_line_and_exit_status_2(tmp_path, capsys, make_args, message):
    args = ["fit", "gmm", "--out", str(tmp_path / "o"), "--quiet", *make_args(tmp_path)]
    try:
        status = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        status = exc.code
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ppl-models")
    assert "Traceback" not in err
    assert re.search(message, err), err


def test_one_dimensional_npz_is_refused(tmp_path, capsys):
    path = tmp_path / "flat.npz"
    np.savez(path, x=np.arange(10.0))
    assert main(["fit", "--data", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "2-D" in capsys.readouterr().err


# ------------------------------------------------------------------ read from the registries
def _parses(argv: list[str]) -> bool:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 2
        return False
    return True


@pytest.mark.parametrize(
    ("argv", "registry"),
    [
        (["fit", "gmm", "--method"], "ppl_models.cli.fit_mixture.DRIVERS"),
        (["fit", "gmm", "--guide"], "guides.KINDS"),
        (["fit", "vae", "--prior"], "ppl_models.cli.fit_vae.PRIORS"),
        (["fit", "vae", "--likelihood"], "ppl_models.models.vae.LIKELIHOODS"),
        (["select-k", "--posterior"], "ppl_models.workflows.select_k.POSTERIORS"),
    ],
)
def test_every_choice_list_is_its_registry(monkeypatch, capsys, argv, registry):
    module_name, _, attribute = registry.rpartition(".")
    table = getattr(importlib.import_module(module_name), attribute)
    assert table and all(_parses([*argv, name]) for name in table)
    assert not _parses([*argv, "newcomer"])
    monkeypatch.setitem(table, "newcomer", next(iter(table.values())))
    assert _parses([*argv, "newcomer"])  # a new entry is offered without touching the CLI


def test_covariance_types_are_the_models_own():
    from ppl_models.models.mixture import COVARIANCE_TYPES

    for command in (["fit", "gmm"], ["compare-guides", "gmm"], ["select-k"]):
        for kind in COVARIANCE_TYPES:
            assert _parses([*command, "--covariance-type", kind])
        assert not _parses([*command, "--covariance-type", "tied"])


class _SphericalOnly(GaussianMixture):
    """A mixture family whose constructor takes K only."""

    name = "spherical_gmm"

    def __init__(self, n_components: int = 2):
        super().__init__(n_components, covariance_type="spherical")


def test_a_mixture_added_to_the_registry_gets_a_fit_command_with_its_own_options(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setitem(MIXTURES, _SphericalOnly.name, _SphericalOnly)
    monkeypatch.setitem(MODELS, _SphericalOnly.name, _SphericalOnly)
    assert _parses(["fit", "spherical_gmm", "--components", "3"])
    assert not _parses(["fit", "spherical_gmm", "--covariance-type", "full"])  # not its option
    assert not _parses(["fit", "spherical_gmm", "--df", "3"])
    assert _parses(["fit", "student_t_mixture", "--df", "3"])
    assert not _parses(["fit", "gmm", "--df", "3"])  # --df is the Student-t's alone
    out = tmp_path / "o"
    assert main(["fit", "spherical_gmm", "--out", str(out), "--quiet", "--no-plots"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["model"], metrics["covariance_type"]) == ("spherical_gmm", "spherical")


def test_fit_with_no_model_is_the_default_and_help_lists_the_models(capsys):
    assert build_parser().parse_args(
        ["fit", "gmm"]) == build_parser().parse_args(with_default_model(["fit"]))
    assert with_default_model(["fit", "--out", "x"]) == ["fit", "gmm", "--out", "x"]
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    mixtures = sorted(MIXTURES)
    assert len(mixtures) >= 2 and all(f"\n    {name}" in printed for name in [*mixtures, "vae"])
