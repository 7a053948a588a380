"""Priors as plain data: a distribution's class name and tensor arguments, and back.

Only the classes of :data:`~ppl_models.models.registry.PRIOR_DISTRIBUTIONS` (and
``Independent`` over one of them) are written or rebuilt; anything else (a callable, a
transformed distribution) is reported as not saved. Rebuilding never looks a name up in
:mod:`pyro.distributions`, so a saved file cannot name an arbitrary class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyro.distributions as dist
import torch

from ppl_models._shared.checks import check_int
from ppl_models.models.registry import PRIOR_DISTRIBUTIONS

__all__ = ["decode_priors", "encode_priors"]


def _distribution_args(prior: dist.Distribution) -> dict[str, torch.Tensor] | None:
    """Constructor arguments of ``prior`` if rebuilding it from them gives it back, else None."""
    cls = PRIOR_DISTRIBUTIONS.get(type(prior).__name__)
    if cls is not type(prior):
        return None
    args = {
        name: prior.__dict__[name]
        for name in prior.arg_constraints
        if isinstance(prior.__dict__.get(name), torch.Tensor)
    }
    if not args:
        args = {
            name: value
            for name in prior.arg_constraints
            if isinstance(value := getattr(prior, name, None), torch.Tensor)
        }
    if isinstance(prior, dist.LKJCholesky):
        args["dim"] = torch.tensor(prior.dim)
    try:
        rebuilt = _build(cls, args)
    except (TypeError, ValueError):
        return None
    if rebuilt.batch_shape != prior.batch_shape or rebuilt.event_shape != prior.event_shape:
        return None
    return args


def _build(cls: type[dist.Distribution], args: Mapping[str, torch.Tensor]) -> dist.Distribution:
    return cls(**{k: int(v) if k == "dim" else v for k, v in args.items()})


def encode_priors(priors: Mapping[str, Any]) -> tuple[dict, dict, list[str]]:
    """``(description, tensors, not_saved)`` of a model's priors.

    A tensor prior (a fixed site) is ``{"fixed": True}``; a distribution
    ``{"distribution": name}`` (with ``"event_dims"`` for an ``Independent`` wrapper).
    """
    described, tensors, unsaved = {}, {}, []
    for site, prior in priors.items():
        if isinstance(prior, torch.Tensor):
            described[site] = {"fixed": True}
            tensors[site] = {"value": prior}
            continue
        spec: dict[str, Any] = {}
        if type(prior) is dist.Independent:
            spec["event_dims"] = prior.reinterpreted_batch_ndims
            prior = prior.base_dist
        args = _distribution_args(prior) if isinstance(prior, dist.Distribution) else None
        if args is None:
            unsaved.append(site)
            continue
        described[site] = {"distribution": type(prior).__name__, **spec}
        tensors[site] = args
    return described, tensors, unsaved


def decode_priors(described: Any, tensors: Any, *, max_dim: int | None = None) -> dict[str, Any]:
    """Priors from :func:`encode_priors`'s output.

    ``max_dim`` bounds an ``LKJCholesky`` prior's ``dim`` (the number of features, so at most
    the largest dimension of a result's tensors): a larger one is refused before the
    distribution, whose size grows with ``dim``, is built.

    Raises
    ------
    ValueError
        Naming the site, for a distribution outside the allow-list, arguments it does not
        take, or values it refuses.
    """
    if not isinstance(described, Mapping) or not isinstance(tensors, Mapping):
        raise ValueError("model.priors: expected a mapping of site -> prior description")
    undescribed = sorted(set(tensors) - set(described))
    if undescribed:
        raise ValueError(f"model.priors: tensors saved for undescribed priors {undescribed}")
    priors: dict[str, Any] = {}
    for site, spec in described.items():
        args = tensors.get(site)
        if not isinstance(spec, Mapping) or not isinstance(args, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in args.values()
        ):
            raise ValueError(f"model.priors['{site}']: no tensors saved for this prior")
        if spec.get("fixed") is True:
            if set(args) != {"value"}:
                raise ValueError(f"model.priors['{site}']: a fixed site needs one 'value'")
            priors[site] = args["value"]
            continue
        name = spec.get("distribution")
        cls = PRIOR_DISTRIBUTIONS.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ValueError(
                f"model.priors['{site}']: distribution {name!r} is not one a result may name; "
                f"allowed: {sorted(PRIOR_DISTRIBUTIONS)}"
            )
        allowed = set(cls.arg_constraints) | ({"dim"} if cls is dist.LKJCholesky else set())
        if not set(args) <= allowed:
            raise ValueError(
                f"model.priors['{site}']: {name} takes no {sorted(set(args) - allowed)}"
            )
        dim = args.get("dim")
        if dim is not None and (dim.numel() != 1 or dim.is_floating_point() or dim.is_complex()
                                or not 1 <= int(dim) <= (max_dim or int(dim))):
            raise ValueError(
                f"model.priors['{site}']: {name} dim must be one positive integer"
                f"{f' at most {max_dim} (the largest saved dimension)' if max_dim else ''}; got "
                f"{dim.item() if dim.numel() == 1 else f'shape {tuple(dim.shape)}'}"
            )
        try:
            prior = _build(cls, args)
            event_dims = spec.get("event_dims")
            if event_dims is not None:
                prior = prior.to_event(check_int(event_dims, "event_dims", minimum=0))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"model.priors['{site}']: {name} refuses its values ({exc})") from None
        priors[site] = prior
    return priors
