"""``fit vae`` reports its active units (with a warning on collapse) and its training curve."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ppl_models.cli import main
from ppl_models.cli.fit_vae import PRIORS as VAE_PRIORS
from ppl_models.images import load_images
from ppl_models.infer import load_checkpoint
from ppl_models.models import VAE

ARGS = ["fit", "vae", "--prior", "standard", "--epochs", "1", "--batch-size", "250",
        "--particles", "2"]


def test_active_units_and_training_curve(tmp_path, capsys):
    out = tmp_path / "vae"
    assert main([*ARGS, "--latent-dim", "3", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Independent count: the restored encoder's means on the test images, numpy's variance.
    args = argparse.Namespace(latent_dim=3, components=None)
    model = VAE_PRIORS["standard"](64, args, {"likelihood": metrics["likelihood"]})
    load_checkpoint(out / "checkpoint", model)
    x_test, _ = load_images("digits", split="test", binarize="threshold")
    with torch.no_grad():
        codes = model.eval().code_mean(x_test).numpy()
    variances = codes.astype(np.float64).var(axis=0, ddof=1)
    np.testing.assert_allclose(metrics["active_unit_variances"], variances, rtol=1e-4)
    assert metrics["active_units"] == int((variances > metrics["active_unit_threshold"]).sum())
    err = capsys.readouterr().err
    assert ("warning" in err) == (metrics["active_units"] < 2)


def test_collapsed_encoder_warns(tmp_path, capsys, monkeypatch):
    # An encoder whose mean ignores its input: every unit collapsed.
    def constant(self, x):
        return torch.zeros(x.shape[0], self.latent_dim)

    monkeypatch.setattr(VAE, "code_mean", constant)
    out = tmp_path / "collapsed"
    assert main([*ARGS, "--latent-dim", "2", "--no-plots", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["active_units"] == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only 0 of 2 latent dimensions are active" in err[0]
