"""The registry of guide families and :func:`build`, the one way to make a guide.

Each family is a :class:`Family`: a small builder over Pyro's autoguides, the options it takes,
and the rule saying when it cannot serve a model. Builders receive the model object (for its
declarations) and the callable the guide must trace (:func:`~guides.structure.
guide_visible_model`: enumerated sites already hidden, ``marginal_model`` when there is one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from pyro.infer import autoguide

from guides.amortized import AmortizedGuide, AmortizedNormal
from guides.flow import IAFNormal
from guides.laplace import LaplaceApproximation
from guides.structure import (
    declared_create_plates,
    declared_local_latents,
    enumerated_sites,
    guide_visible_model,
    model_callable,
    model_name,
)

__all__ = ["GLOBAL_KINDS", "KINDS", "Family", "applicable_kinds", "build", "refusal"]


def _serves_any(model: Any) -> str | None:
    return None


@dataclass(frozen=True)
class Family:
    """A guide family.

    Attributes
    ----------
    make : callable
        ``make(model, visible, **options) -> guide``; ``visible`` is the callable to trace.
    description : str
        One line: the family and its Pyro class.
    options : tuple of str
        Keyword options the family accepts.
    refuse : callable
        ``refuse(model) -> str | None``: why the family cannot serve ``model`` (``None`` if it
        can), decided from what the model declares.
    """

    make: Callable[..., Callable]
    description: str
    options: tuple[str, ...]
    refuse: Callable[[Any], str | None] = _serves_any


# ---------------------------------------------------------------------- option checks
def _positive_int(kind: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"guide kind {kind!r}: {name} must be a positive integer; got {value!r}")
    return value


# ---------------------------------------------------------------------- builders
def _map(model: Any, visible: Callable, **options: Any) -> autoguide.AutoGuide:
    return autoguide.AutoDelta(visible, **options)


def _mean_field(model: Any, visible: Callable, **options: Any) -> autoguide.AutoGuide:
    return autoguide.AutoNormal(visible, **options)


def _full_rank(model: Any, visible: Callable, **options: Any) -> autoguide.AutoGuide:
    return autoguide.AutoMultivariateNormal(visible, **options)


def _low_rank(
    model: Any, visible: Callable, *, rank: int | None = None, **options: Any
) -> autoguide.AutoGuide:
    if rank is not None:
        _positive_int("low_rank", "rank", rank)
    return autoguide.AutoLowRankMultivariateNormal(visible, rank=rank, **options)


def _flow(
    model: Any,
    visible: Callable,
    *,
    num_transforms: int = 2,
    hidden_dim: Sequence[int] | None = None,
    init_loc_fn: Callable | None = None,
    init_scale: float = 0.1,
) -> autoguide.AutoGuide:
    _positive_int("flow", "num_transforms", num_transforms)
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not (
        init_scale > 0
    ):
        raise ValueError(f"guide 'flow': init_scale must be a positive number; got {init_scale!r}")
    return IAFNormal(visible, hidden_dim=hidden_dim, num_transforms=num_transforms,
                     init_loc_fn=init_loc_fn, init_scale=init_scale)


def _laplace(model: Any, visible: Callable, **options: Any) -> autoguide.AutoGuide:
    return LaplaceApproximation(visible, **options)


def _refuse_laplace(model: Any) -> str | None:
    enumerated = enumerated_sites(model)
    if enumerated and getattr(model, "marginal_model", None) is None:
        return (
            f"the Laplace approximation needs the exact log density, but the model sums out "
            f"{list(enumerated)} by enumeration and has no marginal_model (its Hessian would "
            "be conditioned on a random draw of them)"
        )
    return None


def _encoder_widths(hidden: Any) -> tuple[int, ...]:
    widths = tuple(hidden) if isinstance(hidden, Sequence) else hidden
    if not isinstance(widths, tuple) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in widths
    ):
        raise ValueError(
            "guide kind 'amortized': hidden must be a sequence of positive integers; "
            f"got {hidden!r}"
        )
    return widths


def _global_part(model: Any, global_kind: str | Callable, options: dict[str, Any]) -> Callable:
    """``blocked_model -> guide`` for the global latents of an amortized guide."""
    if callable(global_kind):
        if options:
            raise ValueError(
                f"guide kind 'amortized': options {sorted(options)} are for a named "
                "global_kind, not a callable"
            )
        return lambda blocked: global_kind
    family = GLOBAL_KINDS.get(global_kind)
    if family is None:
        why = (
            " (a Laplace approximation needs the exact joint density, which the encoder's "
            "sampled local latents do not give)"
            if global_kind == "laplace"
            else ""
        )
        raise ValueError(
            f"guide kind 'amortized': global_kind must be one of {sorted(GLOBAL_KINDS)} or a "
            f"guide callable; got {global_kind!r}{why}"
        )
    _check_options(global_kind, family, options)
    return partial(family.make, model, **options)


def _amortized(
    model: Any,
    visible: Callable,
    *,
    global_kind: str | Callable = "mean_field",
    hidden: Sequence[int] = (64,),
    inputs: Callable | None = None,
    create_plates: Callable | None = None,
    **global_options: Any,
) -> AmortizedGuide:
    widths = _encoder_widths(hidden)
    if inputs is not None and not callable(inputs):
        raise ValueError(f"guide kind 'amortized': inputs must be callable; got {inputs!r}")
    global_part = _global_part(model, global_kind, global_options)
    local = AmortizedNormal(
        visible, declared_local_latents(model), model.local_plate, hidden=widths, inputs=inputs
    )
    return AmortizedGuide(visible, local, global_part, create_plates=create_plates)


def _refuse_amortized(model: Any) -> str | None:
    if declared_local_latents(model):
        return None
    if not getattr(model, "local_plate", None):
        return (
            "model has no continuous per-observation latents to amortise (it declares no "
            "local_plate / local_sites)"
        )
    enumerated = [s for s in getattr(model, "local_sites", ()) if s in enumerated_sites(model)]
    detail = f" (its local sites {enumerated} are enumerated)" if enumerated else ""
    return f"model has no continuous per-observation latents to amortise{detail}"


_INIT = ("init_loc_fn",)

#: Registry of guide families: name -> :class:`Family`.
KINDS: dict[str, Family] = {
    "map": Family(_map, "point mass at the posterior mode (AutoDelta)", (*_INIT, "create_plates")),
    "mean_field": Family(
        _mean_field,
        "independent Normal per coordinate (AutoNormal)",
        (*_INIT, "init_scale", "create_plates"),
    ),
    "full_rank": Family(
        _full_rank,
        "one multivariate Normal over all coordinates (AutoMultivariateNormal)",
        (*_INIT, "init_scale"),
    ),
    "low_rank": Family(
        _low_rank,
        "Normal with low-rank-plus-diagonal covariance (AutoLowRankMultivariateNormal)",
        (*_INIT, "init_scale", "rank"),
    ),
    "flow": Family(
        _flow,
        "inverse autoregressive flow, Kingma et al. 2016 (AutoIAFNormal, started at init)",
        (*_INIT, "init_scale", "num_transforms", "hidden_dim"),
    ),
    "laplace": Family(
        _laplace,
        "Gaussian at the mode with the inverse Hessian as covariance (AutoLaplaceApproximation)",
        _INIT,
        _refuse_laplace,
    ),
    "amortized": Family(
        _amortized,
        "encoder network for per-observation latents joined with a global kind (AutoGuideList)",
        ("global_kind", "hidden", "inputs", "create_plates"),  # + the global kind's options
        _refuse_amortized,
    ),
}

#: Kinds that may serve as the global part of ``amortized``.
GLOBAL_KINDS: dict[str, Family] = {
    k: f for k, f in KINDS.items() if k not in ("amortized", "laplace")
}


def refusal(kind: str, model: Any) -> str | None:
    """Why family ``kind`` cannot serve ``model`` (``None`` when it can)."""
    return KINDS[kind].refuse(model)


def applicable_kinds(model: Any) -> list[str]:
    """The kinds of :data:`KINDS` that can serve ``model``, sorted."""
    model_callable(model)
    return sorted(k for k in KINDS if refusal(k, model) is None)


def _check_options(kind: str, family: Family, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(family.options))
    if unknown:
        raise ValueError(
            f"guide kind {kind!r} takes no option(s) {unknown}; its options: "
            f"{sorted(family.options)}"
        )


def build(kind: str | Callable, model: Any, **options: Any) -> Callable:
    """A guide of family ``kind`` for ``model``.

    The guide reads the model's latent structure (names, shapes, supports, plates) from one
    traced run at its first call, as Pyro's autoguides do, and from what the model declares:
    enumerated sites are hidden (the guide is built on ``marginal_model`` when the model has
    one, see :func:`~guides.structure.guide_visible_model`); ``amortized`` encodes the
    ``local_sites`` of ``local_plate``; a model's ``create_plates`` method (its plates for
    given arguments, e.g. a minibatch's explicit subsample indices) is used by the kinds that
    take the option, unless ``create_plates`` is passed.

    Parameters
    ----------
    kind : str or callable
        A key of :data:`KINDS`, or a user's guide callable (returned as it is).
    model
        A Pyro model, or a model object with ``model`` and optional declarations
        (``enumerated_sites``, ``marginal_model``, ``local_plate``, ``local_sites``).
    **options
        The family's options (``Family.options``): ``init_loc_fn`` (all), ``init_scale``
        (``mean_field``, ``full_rank``, ``low_rank``, ``flow``), ``rank`` (``low_rank``),
        ``num_transforms`` and ``hidden_dim`` (``flow``), ``create_plates`` (``map``,
        ``mean_field``, ``amortized``); for ``amortized``: ``global_kind`` (a key of
        :data:`GLOBAL_KINDS` or a callable, default ``"mean_field"``), ``hidden`` (encoder
        widths, default ``(64,)``), ``inputs`` (``callable(*args, **kwargs) -> Tensor``, the
        observations; default the model's first argument) and the global kind's options.

    Returns
    -------
    callable
        A Pyro guide taking the model's arguments.

    Raises
    ------
    ValueError
        For an unknown kind or a kind that cannot serve the model (listing the kinds that
        apply), and for an option the family does not take or a bad option value.
    TypeError
        When ``model`` is not a Pyro model.
    """
    model_callable(model)
    if callable(kind):
        if options:
            raise ValueError(
                f"options {sorted(options)} apply to named guide kinds; a guide callable is "
                "used as it is"
            )
        return kind
    family = KINDS.get(kind) if isinstance(kind, str) else None
    if family is None:
        raise ValueError(
            f"unknown guide kind {kind!r}; kinds that apply to {model_name(model)}: "
            f"{', '.join(applicable_kinds(model))} (or pass a guide callable)"
        )
    reason = family.refuse(model)
    if reason is not None:
        raise ValueError(
            f"guide kind {kind!r} cannot serve {model_name(model)}: {reason}; kinds that "
            f"apply: {', '.join(applicable_kinds(model))}"
        )
    if kind != "amortized":
        _check_options(kind, family, options)
    declared = declared_create_plates(model)
    if declared is not None and "create_plates" in family.options:
        options.setdefault("create_plates", declared)
    return family.make(model, guide_visible_model(model), **options)
