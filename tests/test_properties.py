"""Property-based tests (hypothesis) of the public loaders, ``fit_em`` and ``fit_svi``.

Every generated case must end in a correct result or a clear ``ValueError``: never a silent
wrong number, a NaN result, an exception of another type, or a hang (each example has a
deadline). "Correct" is checked against independent answers: the values written to the file,
NumPy's own conversion, and the log-likelihood of the returned parameters recomputed with
NumPy. Hostile cases (NaN/inf, extreme scales and offsets, duplicated points, single points,
constant columns, K larger than N) are tagged with ``hypothesis.event``; run with
``--hypothesis-show-statistics`` to count them.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ppl_models.data import check_data, load
from ppl_models.infer import fit_em, fit_svi
from ppl_models.models import GaussianMixture

SETTINGS = settings(
    max_examples=60,
    deadline=5000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
special = st.sampled_from([math.nan, math.inf, -math.inf])


def _matrix(draw, rows, cols, hostile: bool) -> np.ndarray:
    values = draw(hnp.arrays(np.float64, (rows, cols), elements=finite))
    if hostile:
        i, j = draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))
        values[i, j] = draw(special)
    return values


@st.composite
def csv_tables(draw):
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    hostile = draw(st.booleans())
    values = _matrix(draw, rows, cols, hostile)
    style = draw(st.sampled_from(["comma", "semicolon_decimal_comma", "tab"]))
    return values, style, hostile


def _format(v: float, style: str) -> str:
    text = "" if math.isnan(v) else repr(float(v))
    return text.replace(".", ",") if style == "semicolon_decimal_comma" else text


@SETTINGS
@given(table=csv_tables())
def test_csv_round_trip_or_value_error(tmp_path_factory, table) -> None:
    values, style, hostile = table
    sep = {"comma": ",", "semicolon_decimal_comma": ";", "tab": "\t"}[style]
    names = [f"c{j}" for j in range(values.shape[1])]
    lines = [sep.join(names)] + [sep.join(_format(v, style) for v in row) for row in values]
    path = Path(tmp_path_factory.mktemp("csv")) / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    event(f"csv: {style}{', NaN/inf' if hostile else ''}")
    if not np.isfinite(values).all():
        with pytest.raises(ValueError, match=r"NaN or infinite|missing value"):
            load(path)
        return
    x, got = load(path)
    assert got == names and x.dtype == torch.float64
    np.testing.assert_array_equal(x.numpy(), values)


def _shapes(max_side: int):
    """Mostly 2-D shapes (the valid ones), sometimes 0-, 1- or 3-D or empty."""
    two_d = st.tuples(st.integers(1, max_side), st.integers(1, max_side))
    other = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=max_side)
    return st.one_of(two_d, two_d, other)


@SETTINGS
@given(
    array=hnp.arrays(
        st.sampled_from([np.float64, np.float32, np.int64, np.int16, np.bool_, np.complex64]),
        _shapes(4),
    ),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_npz_loader_correct_or_value_error(tmp_path_factory, array, dtype) -> None:
    path = Path(tmp_path_factory.mktemp("npz")) / "a.npz"
    np.savez(path, x=array)
    ok_kind = array.dtype.kind in "biuf"
    ok_shape = array.ndim == 2 and array.shape[0] > 0 and array.shape[1] > 0
    values = array.astype(np.float64) if ok_kind else None
    ok_values = ok_kind and bool(np.isfinite(values).all())
    fits = ok_values and bool((np.abs(values) <= torch.finfo(dtype).max).all())
    event(f"npz: {'valid' if ok_kind and ok_shape and fits else 'hostile'}")
    if ok_kind and ok_shape and fits:
        x, _ = load(path, dtype=dtype)
        np.testing.assert_array_equal(x.numpy(), values.astype(x.numpy().dtype))
    else:
        with pytest.raises(ValueError):
            load(path, dtype=dtype)


@SETTINGS
@given(
    array=hnp.arrays(
        st.sampled_from([np.float64, np.float32, np.int64, np.uint8, np.complex128]),
        _shapes(5),
    )
)
def test_check_data_correct_or_value_error(array) -> None:
    valid = (
        array.dtype.kind in "biuf"
        and array.ndim == 2
        and min(array.shape) > 0
        and bool(np.isfinite(array.astype(np.float64)).all())
    )
    event(f"check_data: {'valid' if valid else 'hostile'}")
    if not valid:
        with pytest.raises(ValueError):
            check_data(array)
        return
    t = check_data(array)
    # exact whenever float64 or an integer within float32's exact range
    expected = array.astype(t.numpy().dtype)
    np.testing.assert_array_equal(t.numpy(), expected)


KINDS = ["plain", "scaled", "offset", "duplicated", "constant_column", "nan", "inf",
         "single_point", "k_above_n"]
HOSTILE_KINDS = [k for k in KINDS if k != "plain"]


@st.composite
def mixture_problems(draw, kind: str | None = None):
    n, d = draw(st.integers(2, 40)), draw(st.integers(1, 3))
    k = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    centres = rng.normal(scale=4.0, size=(k, d))
    base = centres[rng.integers(k, size=n)] + rng.normal(size=(n, d))
    kind = kind or draw(st.sampled_from(KINDS))
    power = draw(st.integers(-12, 12))
    x = base
    if kind == "scaled":
        x = base * 10.0**power
    elif kind == "offset":
        x = base + draw(st.sampled_from([1e3, 1e8, 1e12, -1e12]))
    elif kind == "duplicated":
        x = np.repeat(base[:1], n, 0) if draw(st.booleans()) else np.concatenate([base, base])
    elif kind == "constant_column":
        x = base.copy()
        x[:, 0] = 7.5
    elif kind in ("nan", "inf"):
        x = base.copy()
        x[draw(st.integers(0, n - 1)), 0] = math.nan if kind == "nan" else -math.inf
    elif kind == "single_point":
        x = base[:1]
    elif kind == "k_above_n":
        x, k = base[:2], 3
    cov = draw(st.sampled_from(["full", "diag", "spherical"]))
    return x, k, cov, kind


def _numpy_log_likelihood(x: np.ndarray, model: GaussianMixture, params) -> float:
    moments = model.em_state({k: v.double() for k, v in params.items()})
    w = moments["weights"].numpy()
    mu = moments["locs"].numpy()
    cov = moments["covariances"].numpy()
    d = x.shape[1]
    if cov.ndim == 1:
        cov = cov[:, None, None] * np.eye(d)
    elif cov.ndim == 2:
        cov = np.stack([np.diag(c) for c in cov])
    dens = []
    for j in range(len(w)):
        _, logdet = np.linalg.slogdet(cov[j])
        diff = x - mu[j]
        maha = np.einsum("nd,nd->n", diff, np.linalg.solve(cov[j], diff.T).T)
        dens.append(math.log(w[j]) - 0.5 * (d * math.log(2 * math.pi) + logdet + maha))
    return float(np.logaddexp.reduce(np.stack(dens), axis=0).sum())


@pytest.mark.parametrize("kind", KINDS)
@settings(SETTINGS, max_examples=15)
@given(data=st.data())
def test_fit_em_correct_or_value_error(kind: str, data) -> None:
    x, k, cov, kind = data.draw(mixture_problems(kind))
    event(f"fit_em: {kind}{' K>N' if k > len(x) else ''}")
    model = GaussianMixture(k, cov)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)  # collapse notes are allowed, not errors
        try:
            result = fit_em(model, torch.as_tensor(x), max_iter=50, progress=False)
        except ValueError as exc:
            assert str(exc) and "\n" not in str(exc)
            event("fit_em: ValueError")
            return
    if k == 1 and cov == "full" and len(x) <= x.shape[1]:  # degenerate: must be said
        assert any("collapsed" in str(w.message) for w in caught)
    event("fit_em: result")
    for value in result.params.values():
        assert torch.isfinite(value).all()
    total = result.info["log_likelihood"]
    assert math.isfinite(total)
    # The reported log-likelihood belongs to the returned parameters (SciPy, independent).
    reference = _numpy_log_likelihood(x, model, result.params)
    # Up to the precision with which locations near the data can be written down (the
    # spacing of floats there, against the narrowest component's spread).
    spacing = float(np.spacing(np.abs(x).max()))
    narrowest = float(model.covariances(model.full_params(result.params, x.shape[1]))
                      .diagonal(dim1=-2, dim2=-1).min().sqrt())
    assert total == pytest.approx(reference, rel=1e-6,
                                  abs=len(x) * (1e-6 + spacing / narrowest))
    assert kind not in ("nan", "inf", "constant_column", "single_point", "k_above_n")
    if k == 1:  # the MLE of one Gaussian is the sample mean
        np.testing.assert_allclose(result.params["locs"][0].numpy(), x.mean(0),
                                   rtol=1e-9, atol=1e-9 * np.abs(x).max())


@settings(max_examples=12, deadline=20000, derandomize=True)
@given(problem=mixture_problems())
def test_fit_svi_few_steps_finite_or_value_error(problem) -> None:
    x, k, cov, kind = problem
    event(f"fit_svi: {kind}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = fit_svi(GaussianMixture(k, cov), torch.as_tensor(x), num_steps=3,
                             num_draws=5, progress=False)
        except ValueError as exc:
            assert str(exc)
            return
    assert all(torch.isfinite(v).all() for v in result.params.values())
    assert kind not in ("nan", "inf")
