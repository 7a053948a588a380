"""``ppl-models fit vae`` end to end on the bundled digits, and its one-line errors."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from ppl_models.cli import main
from ppl_models.cli.fit_vae import PRIORS as VAE_PRIORS
from ppl_models.diagnostics import cluster_confusion
from ppl_models.images import load_images
from ppl_models.infer import load_checkpoint

PRIORS = ("standard", "mog", "vamp", "gmvae")


def _restore(metrics: dict, out) -> torch.nn.Module:
    """A fresh model of the same structure with the checkpoint's networks."""
    args = argparse.Namespace(latent_dim=metrics["latent_dim"],
                              components=metrics["n_components"])
    model = VAE_PRIORS[metrics["prior"]](metrics["n_features"], args,
                                             {"likelihood": metrics["likelihood"]})
    state = load_checkpoint(out / "checkpoint", model)
    assert state["epoch"] == metrics["n_epochs"]
    return model.eval()


@pytest.mark.parametrize("prior", PRIORS)
def test_fit_vae_on_digits_writes_metrics_checkpoint_and_plots(tmp_path, capsys, prior):
    out = tmp_path / prior
    assert main(["fit", "vae", "--prior", prior, "--epochs", "1", "--batch-size", "250",
                 "--components", "10", "--latent-dim", "4", "--particles", "4",
                 "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["model"], metrics["prior"], metrics["n_epochs"]) == ("vae", prior, 1)
    assert metrics["test_log_likelihood_particles"] == 4
    assert (metrics["n_train"], metrics["n_test"], metrics["n_features"]) == (1500, 297, 64)
    assert metrics["epoch_seconds"] > 0
    for key in ("test_elbo", "test_log_likelihood"):
        assert math.isfinite(metrics[key]), key

    # Independent reference for the test ELBO: Pyro's own estimator on the restored model.
    model = _restore(metrics, out)
    x_test, y_test = load_images("digits", split="test", binarize="threshold")
    loss = TraceEnum_ELBO(max_plate_nesting=1) if prior == "gmvae" else Trace_ELBO()
    pyro.clear_param_store()
    with torch.no_grad():
        elbo = -np.mean([loss.loss(model.model, model.guide, x_test) for _ in range(20)])
    assert metrics["test_elbo"] == pytest.approx(elbo / len(x_test), abs=1.0)

    # Cluster accuracy: absent for the standard prior; else, from the confusion matrix M of
    # the restored model's clusters, at least the best single cell max M_kc / N (a matching
    # of one pair) and at most the purity sum_k max_c M_kc / N (any matching's bound).
    accuracy = metrics["cluster_accuracy"]
    if prior == "standard":
        assert accuracy is None
    else:
        from ppl_models.diagnostics import assign_clusters

        m = cluster_confusion(assign_clusters(model, x_test), y_test)
        assert m.max() / m.sum() - 1e-12 <= accuracy <= m.max(1).sum() / m.sum() + 1e-12

    pngs = {"prior_samples.png", "reconstructions.png", "latent_map.png", "interpolations.png"}
    if prior == "gmvae":
        pngs.add("cluster_samples.png")
    assert {p.name for p in out.glob("*.png")} == pngs
    for name in pngs:
        assert (out / name).stat().st_size > 1000, name


def test_summary_is_printed(tmp_path, capsys):
    assert main(["fit", "vae", "--epochs", "1", "--particles", "2", "--no-plots",
                 "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "test ELBO" in printed and "log p(x)" in printed
    assert not list((tmp_path / "o").glob("*.png"))


def test_time_limit_ends_the_training_early(tmp_path):
    out = tmp_path / "o"
    assert main(["fit", "vae", "--epochs", "50", "--time-limit", "0.001", "--particles", "2",
                 "--no-plots", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_by"] == "time_limit" and metrics["n_epochs"] == 1
    assert metrics["time_limit"] == 0.001


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "vae", "--data", "nosuch"], "unknown image source"),
        (["fit", "vae", "--data", "mnist:/nonexistent/dir"], "nonexistent"),
        (["fit", "vae", "--steps", "5"], "unrecognized arguments: --steps"),
        (["fit", "vae", "--kl-warmup", "-1"], "kl-warmup"),
        (["fit", "gmm", "--prior", "mog"], "unrecognized arguments: --prior"),
        (["fit", "vae", "--covariance-type", "diag"], "unrecognized arguments: --covariance"),
        (["fit", "vae", "--prior", "bogus"], "invalid choice"),
        (["fit", "vae", "--latent-dim", "0"], "must be a positive integer; got 0"),
        (["fit", "vae", "--likelihood", "poisson"], "invalid choice"),
        (["fit", "vae", "--time-limit", "0"], "must be a positive number; got 0"),
        (["fit", "gmm", "--time-limit", "60"], "unrecognized arguments: --time-limit"),
        (["fit", "vae", "--resume", "--overwrite"], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(tmp_path, capsys, argv, message):
    try:
        code = main([*argv, "--out", str(tmp_path / "o"), "--quiet"])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
