"""``ppl-models fit vae`` writes the encoder's diagnostics: ``amortized.nc`` and ``khat.png``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ppl_models._arviz import az
from ppl_models.cli import main
from ppl_models.cli.vae_amortized import write_amortized
from ppl_models.images import load_images
from ppl_models.models import VAE


def test_fit_vae_writes_the_amortized_diagnostics_of_the_test_images(tmp_path):
    out = tmp_path / "o"
    assert main(["fit", "vae", "--prior", "gmvae", "--components", "3", "--epochs", "1",
                 "--batch-size", "250", "--latent-dim", "2", "--particles", "40",
                 "--no-plots", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    figures = metrics["amortized"]
    assert figures["files"] == ["amortized.nc"]
    idata = az.from_netcdf(out / "amortized.nc")
    group = idata.amortized
    assert group.sizes["obs"] == metrics["n_test"]
    # The same draws as the run's own test bound (same seed, batches of 100 and 500):
    # the mean of the per-image bounds is the reported log-likelihood.
    assert float(group["iwae"].mean()) == pytest.approx(metrics["test_log_likelihood"],
                                                        rel=1e-5)
    khat = group["khat"].values
    assert figures["khat_median"] == pytest.approx(float(np.median(khat)))
    assert figures["share_khat_bad"] == pytest.approx(float((khat > 0.7).mean()))
    assert figures["gap_mean"] == pytest.approx(float(group["gap"].mean()))


def test_too_few_particles_for_a_khat_write_no_diagnostics(tmp_path):
    out = tmp_path / "o"
    assert main(["fit", "vae", "--epochs", "1", "--batch-size", "250", "--particles", "4",
                 "--no-plots", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "too few importance samples" in metrics["amortized"]["skipped"]
    assert not (out / "amortized.nc").exists()


def test_with_plots_the_khat_figure_is_written_too(tmp_path):
    x, _ = load_images("digits", split="test", binarize="threshold")
    figures, _ = write_amortized(VAE(64, 2, hidden=(16,)), x[:30], tmp_path, particles=25,
                                 seed=0, progress=False, plots=True)
    assert figures["files"] == ["amortized.nc", "khat.png"]
    assert (tmp_path / "khat.png").stat().st_size > 1000
    assert az.from_netcdf(tmp_path / "amortized.nc").amortized.sizes["obs"] == 30
