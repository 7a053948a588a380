"""Checks that a saved fit result is whole and that its configuration and tensors agree.

:meth:`FitResult.load <ppl_models.infer.result.FitResult.load>` runs :func:`check_fields` on
the raw files, then :func:`check_tensors` against the model rebuilt from the configuration.
Every failure is a ``ValueError`` naming the field, so a corrupt or hostile folder never ends
in a ``KeyError`` or ``TypeError`` deep inside a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ppl_models.models import AmortizedModel, CollapsedLikelihood

__all__ = ["check_fields", "check_tensors"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fail(field: str, needs: str, value: Any) -> None:
    raise ValueError(f"{field} must be {needs}; got {type(value).__name__} {value!r:.60}")


#: Recorded fields of ``result.json``: name -> (test, what it must be).
_FIELDS: dict[str, tuple[Any, str]] = {
    "method": (lambda v: isinstance(v, str), "a string"),
    "converged": (lambda v: isinstance(v, bool), "a boolean"),
    "n_iter": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "seed": (lambda v: v is None or _is_int(v), "an integer or null"),
    "fit_seconds": (_is_number, "a number"),
    "info": (lambda v: isinstance(v, dict), "an object"),
    "columns": (
        lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
        "a list of strings",
    ),
    "priors_not_saved": (
        lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
        "a list of strings",
    ),
    "history": (
        lambda v: isinstance(v, dict)
        and all(isinstance(h, list) and all(_is_number(x) for x in h) for h in v.values()),
        "an object of lists of numbers",
    ),
}


def _tensor_dict(field: str, value: Any) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        _fail(field, "a mapping of names to tensors", value)


def check_fields(meta: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:
    """Types of every recorded field and tensor group."""
    for name, (test, needs) in _FIELDS.items():
        if not test(meta[name]):
            _fail(name, needs, meta[name])
    spec = meta["model"]
    if not isinstance(spec, dict) or set(spec) != {"name", "config", "priors"}:
        _fail("model", "an object with name, config and priors", spec)
    if not isinstance(spec["name"], str):
        _fail("model.name", "a string", spec["name"])
    if not isinstance(spec["config"], dict):
        _fail("model.config", "an object", spec["config"])
    if not isinstance(tensors["data"], torch.Tensor) or tensors["data"].dim() != 2:
        _fail("data", "a tensor (N, D)", tensors["data"])
    for group in ("params", "draws", "state"):
        _tensor_dict(group, tensors[group])
    if not isinstance(tensors["priors"], dict):
        _fail("priors", "a mapping", tensors["priors"])
    for group in ("data", "params", "draws", "state"):
        values = tensors[group] if group != "data" else {"": tensors["data"]}
        for key, value in values.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                where = group if group == "data" else f"{group}['{key}']"
                raise ValueError(f"{where} holds non-finite values")


def check_tensors(model: Any, tensors: Mapping[str, Any]) -> None:
    """The tensors fit ``model``: its sites and shapes, or its networks' state."""
    if isinstance(model, AmortizedModel):
        _check_state(model, tensors)
    elif tensors["state"]:
        raise ValueError(
            f"state: a {model.name} has no network weights, but the file holds "
            f"{sorted(tensors['state'])[:3]}... (another model's tensors)"
        )
    if isinstance(model, CollapsedLikelihood):
        _check_sites(model, tensors)


def _check_sites(model: Any, tensors: Mapping[str, Any]) -> None:
    d = tensors["data"].shape[1]
    shapes = model.site_shapes(d)
    latent = set(model.global_sites(d))
    missing = sorted(latent - set(tensors["params"]))
    if missing:
        raise ValueError(
            f"params has no values for {missing}, latent sites of {model!r} for {d} feature(s) "
            "(n_components or covariance_type differ from the tensors)"
        )
    for group in ("params", "draws"):
        lead = 0 if group == "params" else 2
        for name, value in tensors[group].items():
            if name not in latent:
                raise ValueError(
                    f"{group}['{name}']: not a latent site of {model!r} for {d} feature(s) "
                    f"(its sites: {sorted(latent)}); the tensors belong to another model"
                )
            expected = shapes[name]
            if tuple(value.shape[lead:]) != expected or value.dim() != lead + len(expected):
                raise ValueError(
                    f"{group}['{name}'] has shape {tuple(value.shape)}; {model!r} with the saved "
                    f"configuration needs {'(chain, draw, ' if lead else '('}"
                    f"{', '.join(map(str, expected))}) (n_components or covariance_type differ "
                    "from the tensors)"
                )


def _check_state(model: Any, tensors: Mapping[str, Any]) -> None:
    for group in ("params", "draws"):
        if tensors[group]:
            raise ValueError(
                f"{group}: a {model.name} has no global latent sites, but the file holds "
                f"{sorted(tensors[group])} (another model's tensors)"
            )
    d = tensors["data"].shape[1]
    if d != model.input_dim:
        raise ValueError(f"data has {d} features; the saved model.config has {model.input_dim}")
    expected = model.state_dict()
    saved = tensors["state"]
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"state: the weights do not fit the saved model.config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}; another model's tensors?)"
        )
    for key, value in expected.items():
        if tuple(saved[key].shape) != tuple(value.shape):
            raise ValueError(
                f"state['{key}'] has shape {tuple(saved[key].shape)}; the saved model.config "
                f"needs {tuple(value.shape)}"
            )
