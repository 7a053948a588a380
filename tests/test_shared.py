"""The small shared helpers of ``ppl_models._shared``: validation, progress, JSON, figures,
warnings."""

from __future__ import annotations

import io
import json
import math
import struct
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from ppl_models._shared.checks import check_choice, check_float, check_int
from ppl_models._shared.figures import agg_figure, save_png
from ppl_models._shared.jsonsafe import jsonable, to_json
from ppl_models._shared.progress import show_progress
from ppl_models._shared.warning_capture import captured_warnings


# ------------------------------------------------------------------ checks
@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(1)])
def test_positive_integers_pass_as_int(value):
    got = check_int(value, "num_steps")
    assert got == int(value) and type(got) is int


@pytest.mark.parametrize(
    ("value", "shown"),
    [(True, "True"), (False, "False"), (0, "0"), (-2, "-2"), (2.0, "2.0"), ("3", "'3'"),
     (None, "None"), (np.bool_(True), "np.True_|True")],
)
def test_everything_else_is_refused_in_one_style(value, shown):
    with pytest.raises(ValueError, match=rf"^num_steps must be a positive integer; got ({shown})$"):
        check_int(value, "num_steps")


def test_the_minimum_is_in_the_words():
    assert check_int(0, "n", minimum=0) == 0
    with pytest.raises(ValueError, match=r"^n must be a non-negative integer; got -1$"):
        check_int(-1, "n", minimum=0)
    with pytest.raises(ValueError, match=r"^n must be an integer of at least 10; got 9$"):
        check_int(9, "n", minimum=10)


@pytest.mark.parametrize(
    ("value", "bounds", "ok"),
    [(0.5, {"minimum": 0, "maximum": 1, "strict_maximum": True}, True),
     (1.0, {"minimum": 0, "maximum": 1, "strict_maximum": True}, False),
     (0.0, {"minimum": 0, "maximum": 1, "strict_maximum": True}, True),
     (0.0, {"minimum": 0, "strict_minimum": True}, False),
     (Fraction(1, 3), {"minimum": 0, "strict_minimum": True}, True),
     (3, {}, True),
     (math.inf, {}, False),
     (math.nan, {"minimum": 0}, False),
     (True, {}, False)],
)
def test_floats_against_their_bounds(value, bounds, ok):
    if ok:
        assert check_float(value, "lr", **bounds) == float(value)
    else:
        with pytest.raises(ValueError, match=r"^lr must be a .*number.*; got "):
            check_float(value, "lr", **bounds)


def test_float_rules_read_as_intervals():
    with pytest.raises(ValueError, match=r"^lr must be a positive number; got 0$"):
        check_float(0, "lr", minimum=0, strict_minimum=True)
    with pytest.raises(ValueError, match=r"holdout must be a number in \[0, 1\); got 1.5"):
        check_float(1.5, "holdout", minimum=0, maximum=1, strict_maximum=True)


def test_choices_come_from_a_registry():
    registry = {"svi": None, "em": None}
    assert check_choice("em", "method", registry) == "em"
    with pytest.raises(ValueError, match=r"^method must be one of \['em', 'svi'\]; got 'gibbs'$"):
        check_choice("gibbs", "method", registry)


# ------------------------------------------------------------------ progress
class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize("tty", [True, False])
def test_progress_follows_the_terminal_unless_told(monkeypatch, tty):
    monkeypatch.setattr(sys, "stderr", _Stream(tty))
    assert show_progress(None) is tty
    assert show_progress(True) is True and show_progress(False) is False
    monkeypatch.setattr(sys, "stderr", None)  # pythonw, a detached daemon
    assert show_progress(None) is False
    with pytest.raises(ValueError, match="progress must be True, False or None; got 1"):
        show_progress(1)


# ------------------------------------------------------------------ JSON
def _strict(text: str):
    """Parse as strict JSON: ``NaN``/``Infinity`` are errors (the standard's grammar)."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_has_no_bare_nan_and_plain_types_only():
    value = {
        "nan": math.nan, "inf": -math.inf, "ok": 1.5, "n": np.int64(3), "flag": np.bool_(True),
        "array": np.array([[1.0, np.nan], [np.inf, 2.0]]),
        "tensor": torch.tensor([0.5, float("nan")]), "scalar": torch.tensor(2.0),
        "nested": [{"deep": (np.float32(np.nan), 1)}], "set": {3, 1},
        np.int64(7): "numpy key", (1, 2): "tuple key",
    }
    text = to_json(value)
    assert text.endswith("\n")
    assert _strict(text) == {
        "nan": None, "inf": None, "ok": 1.5, "n": 3, "flag": True,
        "array": [[1.0, None], [None, 2.0]],
        "tensor": [0.5, None], "scalar": 2.0,
        "nested": [{"deep": [None, 1]}], "set": [1, 3],
        "7": "numpy key", "(1, 2)": "tuple key",
    }
    assert jsonable(np.float64(np.nan)) is None and type(jsonable(np.float32(0.5))) is float


def test_json_refuses_what_it_cannot_write():
    with pytest.raises(TypeError, match="cannot write a object to JSON"):
        jsonable({"x": object()})


# ------------------------------------------------------------------ figures
def test_save_png_writes_a_png_of_the_asked_size_and_closes_the_figure(tmp_path):
    fig = agg_figure(3.0, 2.0)
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_png(fig, tmp_path / "deep" / "line.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"  # the PNG signature
    width, height = struct.unpack(">II", data[16:24])  # IHDR: width, height in pixels
    assert 0 < width <= 300 and 0 < height <= 200  # tight box within 3 x 2 in at 100 dpi
    assert fig.axes == []  # cleared: nothing kept alive


def test_save_png_releases_pyplot_figures_even_when_writing_fails(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    assert fig.number in plt.get_fignums()
    (tmp_path / "taken").write_text("a file where the folder should be")
    with pytest.raises(OSError):
        save_png(fig, tmp_path / "taken" / "plot.png")
    assert fig.number not in plt.get_fignums()


# ------------------------------------------------------------------ warnings
def test_warnings_are_recorded_and_printed_once_each_after_the_block():
    stream = io.StringIO()
    with captured_warnings(stream=stream) as notes:
        for _ in range(3):
            warnings.warn("the chain did not mix\nsecond line", UserWarning, stacklevel=1)
        warnings.warn("K=5 has an empty component", UserWarning, stacklevel=1)
        notes.append("a note of the caller")
        assert stream.getvalue() == ""  # nothing during the block
    assert stream.getvalue().splitlines() == [
        "ppl-models: warning: the chain did not mix",
        "ppl-models: warning: K=5 has an empty component",
        "ppl-models: warning: a note of the caller",
    ]


def test_nothing_is_printed_when_the_block_fails():
    stream = io.StringIO()
    with pytest.raises(ValueError), captured_warnings(stream=stream):
        warnings.warn("about to fail", UserWarning, stacklevel=1)
        raise ValueError
    assert stream.getvalue() == ""
    with warnings.catch_warnings():  # the filters are restored afterwards
        warnings.simplefilter("error")
        with pytest.raises(UserWarning):
            warnings.warn("raised again", UserWarning, stacklevel=1)
