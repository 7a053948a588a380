"""Active units against a direct computation on codes with known spreads."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from ppl_models.diagnostics.active_units import active_units


def codes_with_sds(sds, n: int = 4000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, len(sds))) * np.asarray(sds) + 3.0


def test_counts_dimensions_whose_mean_varies():
    # variances 1, 0.25, 0.0025 and 0: two above Burda et al.'s 0.01
    codes = codes_with_sds([1.0, 0.5, 0.05, 0.0])
    units = active_units(torch.as_tensor(codes))
    assert units.count == 2 and units.n_latent == 4
    expected = [statistics.variance(codes[:, j].tolist()) for j in range(4)]
    np.testing.assert_allclose(units.variances, expected, rtol=1e-10, atol=1e-15)
    assert units.warning() is None
    assert active_units(codes, threshold=1e-3).count == 3


def test_collapse_is_reported():
    units = active_units(codes_with_sds([0.01, 0.02, 0.5]))
    assert units.count == 1
    message = units.warning()
    assert message is not None and "only 1 of 3 latent dimensions are active" in message


def test_bad_codes_are_refused():
    with pytest.raises(ValueError, match=r"shape \(N, L\)"):
        active_units(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        active_units(np.array([[0.0], [np.nan]]))
