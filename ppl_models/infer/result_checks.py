"""Checks that a saved fit result is whole and that its configuration and tensors agree.

:meth:`FitResult.load <ppl_models.infer.result.FitResult.load>` runs :func:`check_fields` on
the raw files, then :func:`check_tensors` against the model rebuilt from the configuration.
Every failure is a ``ValueError`` naming the field, so a corrupt or hostile folder never ends
in a ``KeyError`` or ``TypeError`` deep inside a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyro.poutine
import torch

from ppl_models.models import AdversarialModel, AmortizedModel, CollapsedLikelihood

__all__ = [
    "check_config_sizes", "check_fields", "check_tensor", "check_tensors", "largest_dimension",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fail(field: str, needs: str, value: Any) -> None:
    raise ValueError(f"{field} must be {needs}; got {type(value).__name__} {value!r:.60}")


#: The drivers whose results are saved.
METHODS = ("em", "svi", "nuts", "adversarial")

#: Recorded fields of ``result.json``: name -> (test, what it must be).
_FIELDS: dict[str, tuple[Any, str]] = {
    "method": (lambda v: v in METHODS, f"one of {list(METHODS)}"),
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
        and all(
            isinstance(h, list) and all(x is None or _is_number(x) for x in h)
            for h in v.values()
        ),
        "an object of lists of numbers (null for a non-finite one)",
    ),
}


def _tensor_dict(field: str, value: Any) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        _fail(field, "a mapping of names to tensors", value)


def check_tensor(
    where: str, value: torch.Tensor, floating: bool = True, expanded_up_to: int = 0
) -> None:
    """A dense tensor whose stored bytes hold every element it declares, real floating point
    (unless ``floating`` is False) and finite; checked in this order, so that a tensor that
    declares a huge shape over a few bytes is refused before anything reads it.

    ``expanded_up_to`` lets a broadcast view (a prior's scale expanded to the sites' shape,
    saved as one stored value) declare up to that many elements.
    """
    if value.layout != torch.strided:
        raise ValueError(f"{where} must be a dense tensor; got layout {value.layout}")
    stored = value.untyped_storage().nbytes()
    if value.numel() * value.element_size() > stored and value.numel() > expanded_up_to:
        raise ValueError(
            f"{where} declares shape {tuple(value.shape)} ({value.numel()} elements) but holds "
            f"only {stored} bytes: corrupt or hostile"
        )
    if floating and not (value.is_floating_point() and not value.is_complex()):
        raise ValueError(f"{where} must hold real floating-point numbers; got {value.dtype}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{where} holds non-finite values")


def check_fields(meta: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:
    """Types of every recorded field and tensor group, and the tensors' values."""
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
    check_tensor("data", tensors["data"])
    n, d = tensors["data"].shape
    if n == 0 or d == 0:
        raise ValueError(f"data are empty (shape {(n, d)})")
    if meta["columns"] and len(meta["columns"]) != d:
        raise ValueError(f"columns names {len(meta['columns'])} features; data has {d}")
    for group in ("params", "draws", "state"):
        for key, value in tensors[group].items():
            # network buffers may be integers (counters); their dtype is checked against the
            # rebuilt model's
            check_tensor(f"{group}['{key}']", value, floating=group != "state")
    # a prior's argument is no larger than the site it is the prior of
    saved = sum(v.numel() for g in ("params", "draws", "state") for v in tensors[g].values())
    for site, args in tensors["priors"].items():
        if isinstance(args, Mapping):  # their types are checked by decode_priors
            for key, value in args.items():
                if isinstance(value, torch.Tensor):
                    check_tensor(f"priors['{site}']['{key}']", value, floating=False,
                                 expanded_up_to=saved + n * d)


def _dims(value: Any) -> list[int]:
    """Every dimension of every tensor in ``value`` (nested mappings of tensors)."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, Mapping):
        return [d for v in value.values() for d in _dims(v)]
    return []


def _config_ints(config: Any, where: str = "model.config") -> list[tuple[str, int]]:
    if isinstance(config, Mapping):
        return [p for k, v in config.items() for p in _config_ints(v, f"{where}.{k}")]
    if isinstance(config, list):
        return [p for i, v in enumerate(config) for p in _config_ints(v, f"{where}[{i}]")]
    return [(where, config)] if _is_int(config) else []


def largest_dimension(tensors: Mapping[str, Any]) -> int:
    """The largest dimension of the data, sites' values and network weights of a result."""
    return max(_dims({k: tensors[k] for k in ("data", "params", "draws", "state")}), default=0)


def check_config_sizes(config: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:
    """Refuse a configuration with a size no saved tensor has, before the model is built.

    Every size in a model's configuration (components, features, hidden units, latent
    dimensions, pseudo-inputs) is a dimension of some tensor the fit saved: the data, a
    site's values, a network weight. A larger integer cannot describe these tensors, and
    building the model from it could try to allocate any amount of memory.
    """
    largest = largest_dimension(tensors)
    for where, value in _config_ints(config):
        if value > largest:
            digits = str(value)
            shown = digits if len(digits) <= 20 else f"{digits[:12]}... ({len(digits)} digits)"
            raise ValueError(
                f"{where} = {shown} exceeds every dimension of the saved tensors (at most "
                f"{largest}): the configuration does not describe them"
            )


def check_tensors(model: Any, tensors: Mapping[str, Any]) -> None:
    """The tensors fit ``model``: its sites and shapes, or its networks' state."""
    if isinstance(model, AmortizedModel | AdversarialModel):
        _check_state(model, tensors)
    elif tensors["state"]:
        raise ValueError(
            f"state: a {model.name} has no network weights, but the file holds "
            f"{sorted(tensors['state'])[:3]}... (another model's tensors)"
        )
    if isinstance(model, CollapsedLikelihood):
        _check_sites(model, tensors)
        _check_supports(model, tensors)


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


def _check_supports(model: Any, tensors: Mapping[str, Any]) -> None:
    """Each point estimate lies in its site's support (weights on the simplex, scales > 0),
    the supports read from one traced run of the model's marginal model on the data."""
    with torch.random.fork_rng(devices=[]), pyro.poutine.block():
        trace = pyro.poutine.trace(model.marginal_model).get_trace(tensors["data"])
    for name, value in tensors["params"].items():
        site = trace.nodes.get(name)
        if site is None or site["type"] != "sample":
            continue
        if not bool(site["fn"].support.check(value).all()):
            raise ValueError(
                f"params['{name}'] lies outside its support ({site['fn'].support}): corrupt or "
                "edited"
            )


def _check_state(model: Any, tensors: Mapping[str, Any]) -> None:
    for group in ("params", "draws"):
        if tensors[group]:
            raise ValueError(
                f"{group}: a {model.name} has no global latent sites, but the file holds "
                f"{sorted(tensors[group])} (another model's tensors)"
            )
    d = tensors["data"].shape[1]
    if isinstance(model, AmortizedModel) and d != model.input_dim:
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
        kind = saved[key].is_floating_point(), saved[key].is_complex()
        if kind != (value.is_floating_point(), False):
            needs = "real floating-point" if value.is_floating_point() else "integer"
            raise ValueError(
                f"state['{key}'] must hold {needs} numbers like the model's; got "
                f"{saved[key].dtype}"
            )
