"""A Gaussian mixture fit is the same in any units (issue 10).

Rescaling every feature by :math:`a` maps the maximum-likelihood fit to itself (locations and
scales times :math:`a`), so the mean log-likelihood per observation changes by exactly the
Jacobian :math:`-D \\log |a|`; adding a constant changes nothing. The reference is this
identity, applied to the fit in the original units.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from ppl_models.infer import fit_em
from ppl_models.models import GaussianMixture


def _data(n: int = 200, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [6.0, 1.0], [1.0, 7.0]])
    x = np.concatenate([rng.normal(size=(n, 2)) * [1.0, 0.5] + c for c in centres])
    return torch.as_tensor(x)


def _fit(x: torch.Tensor, cov: str = "full", **options):
    return fit_em(GaussianMixture(3, cov), x, progress=False, **options)


@pytest.fixture(scope="module")
def reference():
    return {cov: _fit(_data(), cov) for cov in ("full", "diag", "spherical")}


@pytest.mark.parametrize("power", range(-8, 9))
def test_rescaling_changes_log_likelihood_by_the_jacobian(reference, power: int) -> None:
    x = _data()
    d = x.shape[1]
    scaled = _fit(x * 10.0**power)
    expected = reference["full"].info["mean_log_likelihood"] - d * power * math.log(10.0)
    assert abs(scaled.info["mean_log_likelihood"] - expected) < 1e-6
    # ... because the fit itself is the same up to units.
    locs = reference["full"].params["locs"] * 10.0**power
    torch.testing.assert_close(scaled.params["locs"], locs, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("cov", ["diag", "spherical"])
@pytest.mark.parametrize("power", [-8, -3, 5, 8])
def test_rescaling_compact_covariances(reference, cov: str, power: int) -> None:
    x = _data()
    scaled = _fit(x * 10.0**power, cov)
    expected = reference[cov].info["mean_log_likelihood"] - 2 * power * math.log(10.0)
    assert abs(scaled.info["mean_log_likelihood"] - expected) < 1e-6


def test_an_offset_of_1e8_changes_nothing(reference) -> None:
    shifted = _fit(_data() + 1e8)
    base = reference["full"].info["mean_log_likelihood"]
    assert abs(shifted.info["mean_log_likelihood"] - base) < 1e-6


def test_absolute_reg_covar_on_small_units_names_the_cause() -> None:
    # The old default: reg_covar=1e-6 added to variances of about 1e-16 swamps the data, and
    # the warning must say that this is the cause (not just "collapsed").
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _fit(_data() * 1e-8, reg_covar_mode="absolute")
    messages = [str(w.message) for w in caught]
    assert any("reg_covar" in m and "not small against the variance" in m for m in messages)
    assert any("reg_covar_mode='relative'" in note for note in result.info["warnings"])


def test_relative_mode_refuses_a_constant_feature() -> None:
    x = _data()
    x[:, 1] = 3.0
    with pytest.raises(ValueError, match=r"feature\(s\) \[1\] are constant"):
        _fit(x)


def test_float32_grid_too_coarse_is_refused() -> None:
    # Values near 1e8 are 8 apart in float32: a spread of 1 cannot be resolved.
    x = _data() + 1e8
    with pytest.raises(ValueError, match=r"spaced 8 apart in float32.*float64"):
        _fit(x, dtype=torch.float32)


def test_float32_data_already_rounded_are_refused_even_when_fitting_in_float64() -> None:
    # float32 values near 1e8 were rounded to multiples of 8 before fit_em saw them: casting
    # them to float64 cannot bring the spread back.
    x = (_data() + 1e8).to(torch.float32)
    with pytest.raises(ValueError, match=r"spaced 8 apart in float32.*pass the data as float64"):
        _fit(x)
