"""The benchmark scripts run end to end on tiny inputs (their figures live in RESULTS.md).

Each script is run as a user runs it (a subprocess from the repository root), so that a change
to the package that breaks a benchmark fails here rather than in the next long run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _launch(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300,
    )


def _run(script: str, *args: str) -> str:
    done = _launch(script, *args)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def tiny_binarized_mnist(tmp_path: Path) -> Path:
    """An npz shaped like binarized MNIST (train/valid/test/test_labels), 784 binary pixels."""
    rng = np.random.default_rng(0)

    def images(n: int) -> np.ndarray:
        return (rng.random((n, 784)) < 0.2).astype(np.float32)

    path = tmp_path / "binarized_mnist.npz"
    np.savez(path, train=images(300), valid=images(100), test=images(100),
             test_labels=rng.integers(0, 10, 100))
    return path


def test_vae_mnist_reports_every_prior(tiny_binarized_mnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    _run("vae_mnist.py", "--data", str(tiny_binarized_mnist),
         "--priors", "standard,mog,vamp,gmvae,gmvae-qz", "--epochs", "2",
         "--init-from-codes", "1", "--test-size", "50", "--particles", "20",
         "--hidden", "32", "--latent-dim", "4", "--components", "3",
         "--validate-every", "1", "--json", str(out))
    rows = {row["prior"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"standard", "mog", "vamp", "gmvae", "gmvae-qz"}
    for prior, row in rows.items():
        assert row["test_images"] == 50 and row["particles"] == 20
        assert math.isfinite(row["test_log_likelihood"]), prior
        # Burda et al. (2016): the K-sample bound is at least the ELBO in expectation; on 50
        # untrained images the gap is nats wide, far above the estimates' noise.
        assert row["test_log_likelihood"] > row["test_elbo"], prior
        # ... and it bounds log p(x) <= 0 of binary pixels from below. (L_K <= ELBO + log K is
        # not a theorem: the gap L_K - ELBO can exceed log K whenever q is poor; see
        # tests/test_vae_cli.py::_assert_bounds_ordered.)
        assert row["test_log_likelihood"] <= 3 * row["test_log_likelihood_se"], prior
        assert row["test_log_likelihood_se"] > 0
    assert rows["standard"]["published"] == -89.9 and rows["vamp"]["published"] == -85.6
    for prior in ("mog", "gmvae", "gmvae-qz"):
        assert 0.0 <= rows[prior]["cluster_accuracy"] <= 1.0
    assert rows["standard"]["cluster_accuracy"] is None
    assert rows["vamp"]["cluster_accuracy"] is None


def test_vae_mnist_refuses_unknown_prior(tiny_binarized_mnist: Path) -> None:
    done = _launch("vae_mnist.py", "--data", str(tiny_binarized_mnist),
                   "--priors", "standard,flowprior")
    assert done.returncode == 2
    assert "flowprior" in done.stderr


def test_gmm_em_matches_scikit_learn() -> None:
    output = _run("gmm_em.py", "--quick", "--check")
    # The script fits scikit-learn and ours from the same start and prints the difference.
    assert "log-likelihood goal: met;" in output


def test_vae_overhead_times_both_loops() -> None:
    output = _run("vae_overhead.py", "--quick")
    assert "plain PyTorch loop" in output
    assert output.count("ratio") == 2
