"""A shared check of the ``sample_quality`` entry the ``fit`` commands write into metrics.json
(tests/test_cli_adversarial.py, tests/test_vae_cli.py, tests/test_cli_quality.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats


def assert_sample_quality(figures: dict, *, n_test: int, n_classes: int = 10) -> None:
    """Keys, ranges and internal consistency of one ``sample_quality`` entry: shares summing
    to 1, classes covered counted from them at the 1% share, KL from uniform recomputed by
    scipy, a finite non-negative Fréchet distance, max(1000, n_test) generated images."""
    assert set(figures) == {"confident_share", "classes_covered", "kl_from_uniform",
                            "frechet_distance", "class_shares", "n_generated", "n_reference",
                            "threshold", "min_share", "classifier"}
    assert (figures["threshold"], figures["min_share"]) == (0.9, 0.01)
    assert (figures["n_generated"], figures["n_reference"]) == (max(1000, n_test), n_test)
    assert 0.0 <= figures["confident_share"] <= 1.0
    shares = np.array(figures["class_shares"])
    assert shares.shape == (n_classes,) and shares.min() >= 0
    assert shares.sum() == pytest.approx(1.0, abs=1e-12)
    # every share is a count out of n_generated
    counts = shares * figures["n_generated"]
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
    assert isinstance(figures["classes_covered"], int)
    assert 0 <= figures["classes_covered"] <= n_classes
    assert figures["classes_covered"] == int(np.sum(np.round(counts) >= 0.01 * figures[
        "n_generated"]))
    assert 0.0 <= figures["kl_from_uniform"] <= math.log(n_classes) + 1e-12
    assert figures["kl_from_uniform"] == pytest.approx(
        scipy.stats.entropy(shares, np.full(n_classes, 1 / n_classes)), abs=1e-9)
    assert math.isfinite(figures["frechet_distance"]) and figures["frechet_distance"] >= 0
    classifier = figures["classifier"]
    assert 0.0 <= classifier["test_accuracy"] <= 1.0
