"""Every driver's FitResult survives save -> load unchanged, field by field.

The reference is the object the driver returned: after :meth:`FitResult.save` and
:meth:`FitResult.load` every field must be *identical* (tensors bit for bit with the same
dtype and shape, history and info to the last float, with the same Python types), the model
rebuilt with the same configuration, priors and network weights, and ``result.json`` strict
JSON (no bare ``NaN``/``Infinity``, which other JSON readers refuse). One real fit per driver:
EM (float64, float32, with standard errors), SVI with every global guide family, NUTS with
one chain and with two, and minibatch training of a VAE and a GMVAE.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from ppl_models import FitResult, GaussianMixture, fit_em
from ppl_models.infer import fit_mcmc, fit_svi
from ppl_models.models import GMVAE, VAE


def two_clusters(n: int = 40, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    z = rng.random(n) < 0.4
    x = np.where(z[:, None], rng.normal(size=(n, 2)) - 3.0, rng.normal(size=(n, 2)) + 3.0)
    return torch.as_tensor(x)


def binary(n: int = 60, d: int = 8) -> torch.Tensor:
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(2)) < 0.3).float()


def strict_json(path: Path) -> Any:
    def refuse(token: str) -> None:
        raise AssertionError(f"{path.name} holds the non-JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def assert_identical(got: Any, want: Any, where: str) -> None:
    """Deep equality with equal types: floats bit for bit, tensors by value, dtype, shape."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert torch.equal(got, want), where
        return
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for key, value in want.items():
            assert_identical(got[key], value, f"{where}[{key!r}]")
        return
    if isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_identical(a, b, f"{where}[{i}]")
        return
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), where
        return
    assert got == want, f"{where}: {got!r} != {want!r}"


def assert_round_trip(result: FitResult, folder: Path) -> FitResult:
    result.save(folder)
    strict_json(folder / "result.json")
    loaded = FitResult.load(folder)
    for name in ("method", "converged", "n_iter", "seed", "fit_seconds", "columns", "data",
                 "params", "history", "info"):
        assert_identical(getattr(loaded, name), getattr(result, name), name)
    if result.draws is None:
        assert loaded.draws is None
    else:
        assert_identical(loaded.draws, result.draws, "draws")
    assert type(loaded.model) is type(result.model)
    assert loaded.model.config() == result.model.config()
    assert sorted(loaded.model.priors) == sorted(result.model.priors)
    if isinstance(result.model, torch.nn.Module):
        assert_identical(loaded.model.state_dict(), result.model.state_dict(), "state_dict")
    return loaded


# --------------------------------------------------------------------------------- EM
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_em_round_trip(tmp_path: Path, dtype: torch.dtype) -> None:
    result = fit_em(GaussianMixture(2, "full"), two_clusters(), dtype=dtype, n_init=2,
                    standard_errors=dtype == torch.float64, columns=["a", "b"], progress=False)
    assert result.params["locs"].dtype == dtype
    loaded = assert_round_trip(result, tmp_path / "em")
    assert loaded.columns == ["a", "b"]


def test_em_round_trip_with_user_priors(tmp_path: Path) -> None:
    model = GaussianMixture(2, "diag", priors={"locs": dist.Normal(0.0, 5.0),
                                               "scale": torch.ones(2, 2)})
    result = fit_em(model, two_clusters(), max_iter=10, progress=False)
    loaded = assert_round_trip(result, tmp_path / "em_map")
    assert torch.equal(loaded.model.priors["scale"], torch.ones(2, 2))
    assert float(loaded.model.priors["locs"].scale) == 5.0


# --------------------------------------------------------------------------------- SVI
@pytest.mark.parametrize("guide", ["map", "mean_field", "full_rank", "low_rank", "flow",
                                   "laplace"])
def test_svi_round_trip_for_every_global_guide(tmp_path: Path, guide: str) -> None:
    result = fit_svi(GaussianMixture(2, "diag"), two_clusters(), guide=guide, num_steps=15,
                     num_draws=12, progress=False)
    assert result.info["guide"] == guide
    loaded = assert_round_trip(result, tmp_path / guide)
    assert loaded.guide is None  # the live guide is not saved


# --------------------------------------------------------------------------------- NUTS
@pytest.mark.parametrize("chains", [1, 2])
def test_nuts_round_trip(tmp_path: Path, chains: int) -> None:
    result = fit_mcmc(GaussianMixture(1, "diag"), two_clusters(20), num_samples=8,
                      warmup_steps=8, num_chains=chains, progress=False)
    assert result.draws["locs"].shape[:2] == (chains, 8)
    assert_round_trip(result, tmp_path / f"nuts{chains}")


# --------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("variant", ["vae", "gmvae", "gmvae_q(z|x)"])
def test_trained_network_round_trip(tmp_path: Path, variant: str) -> None:
    model = {
        "vae": lambda: VAE(8, 2, hidden=(6,), prior="mog"),
        "gmvae": lambda: GMVAE(8, 2, 3, hidden=(6,)),
        "gmvae_q(z|x)": lambda: GMVAE(8, 2, 3, hidden=(6,), conditional_encoder=False),
    }[variant]()
    x = binary()
    result = fit_svi(model, x, batch_size=20, num_epochs=2, progress=False)
    assert len(result.history["elbo"]) == 2
    loaded = assert_round_trip(result, tmp_path / variant)
    # the restored networks compute the same bound under the same noise
    torch.manual_seed(3)
    want = result.model.log_importance_weights(x, 4)
    torch.manual_seed(3)
    assert torch.equal(loaded.model.log_importance_weights(x, 4), want)
