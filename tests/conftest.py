"""Shared test set-up: a clean, validated, seeded Pyro state before every test."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

# (set before anything imports matplotlib)
import pyro
import pytest


@pytest.fixture(autouse=True)
def _pyro_state():
    """Clear the param store, enable validation and seed every RNG, as Pyro's own tests do."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
