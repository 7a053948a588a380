"""Starting points shared by the SVI and NUTS drivers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from pyro.infer.autoguide.initialization import init_to_feasible, init_to_median, init_to_value

from ppl_models.infer.em import fit_em, kmeans_plus_plus
from ppl_models.models import MixtureModel

__all__ = ["init_strategy", "initial_values"]

INITS = ("kmeans++", "em", "prior")


def initial_values(
    model: Any, data: torch.Tensor, init: str | Mapping[str, Any] | None, seed: int
) -> dict[str, torch.Tensor]:
    """Values of the global latent sites to start from.

    ``"kmeans++"``: the model's ``initial_params`` from k-means++ responsibilities (a
    symmetric start, e.g. every component at the prior median, would never separate the
    components); ``"em"``: an EM fit's optimum; ``"prior"``/``None``: none (the guide's own
    default); a dict: those values.
    """
    if init is None or init == "prior":
        return {}
    if isinstance(init, Mapping):
        return {k: torch.as_tensor(v, dtype=data.dtype) for k, v in init.items()}
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS} or a dict of site values; got {init!r}")
    if not isinstance(model, MixtureModel):
        raise ValueError(f"init={init!r} needs a mixture model (MixtureModel); pass init='prior'")
    if init == "em":
        params = fit_em(model, data, seed=seed, progress=False).params
    else:
        generator = torch.Generator().manual_seed(int(seed))
        resp = kmeans_plus_plus(data.double(), model.n_components, generator)
        params = model.initial_params(data.double(), resp)
    return {k: v.to(data.dtype) for k, v in params.items()}


def init_strategy(values: Mapping[str, torch.Tensor]) -> Callable:
    """Pyro init strategy: the given values (other sites feasible), else the prior median."""
    if not values:
        return init_to_median
    return init_to_value(values=dict(values), fallback=init_to_feasible)
