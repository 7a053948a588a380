"""The one record every driver returns, and its code-free saving and loading."""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ppl_models._shared.jsonsafe import to_json
from ppl_models.infer.prior_codec import decode_priors, encode_priors
from ppl_models.infer.result_checks import check_fields, check_tensors
from ppl_models.models import AmortizedModel, build_model

__all__ = ["FitResult"]

_FORMAT = "ppl-models/fit-result/1"
_REQUIRED = (
    "model", "priors_not_saved", "method", "history", "converged", "n_iter", "seed",
    "fit_seconds", "info", "columns",
)
#: Tensors every saved result holds (``state``, the networks' weights, is optional: results
#: of models without networks written before it existed have none).
_TENSOR_KEYS = {"data", "params", "draws", "priors"}


@dataclass(frozen=True)
class FitResult:
    """What a driver learned, as plain data.

    Attributes
    ----------
    model : object
        The model fitted (structure and priors, no fitted values).
    method : str
        ``"em"``, ``"svi"`` or ``"nuts"``.
    data : Tensor
        The data the model was fitted to, ``(N, D)``.
    params : dict of str to Tensor
        Point estimates of every global latent site (EM's optimum, SVI's guide median, the
        posterior mean for NUTS), in the sites' own constrained space.
    draws : dict of str to Tensor or None
        Posterior draws, each ``(chain, draw, *site_shape)``: MCMC chains, or one "chain" of
        draws from a variational guide. ``None`` for a point estimate (EM).
    history : dict of str to list of float
        The objective per iteration and its terms, e.g. ``{"log_likelihood": [...]}`` (EM,
        per observation) or ``{"elbo": [...]}`` (SVI, per observation).
    converged : bool
        Whether the driver's stopping rule was met (EM tolerance, SVI plateau, R-hat < 1.05).
    n_iter : int
        Iterations (EM), steps (SVI) or post-warmup draws per chain (NUTS).
    seed : int or None
        The seed the fit started from.
    fit_seconds : float
        Wall time of the fit alone (no loading, no diagnostics).
    info : dict
        JSON-ready extras: objective name, BIC/AIC, restarts, guide kind, warnings.
    columns : list of str
        Feature names.
    guide : object, optional
        The live guide of an SVI fit (not saved; ``None`` after :meth:`load`).
    """

    model: Any
    method: str
    data: torch.Tensor
    params: dict[str, torch.Tensor]
    draws: dict[str, torch.Tensor] | None
    history: dict[str, list[float]]
    converged: bool
    n_iter: int
    seed: int | None
    fit_seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    guide: Any = field(default=None, compare=False, repr=False)

    @property
    def n_features(self) -> int:
        return int(self.data.shape[-1])

    def save(self, path: str | Path) -> Path:
        """Write the result to a folder: ``result.json`` and ``tensors.pt`` (tensors only).

        Nothing is pickled; :meth:`load` reads the tensors with ``weights_only=True``. An
        amortized model's networks are saved as their ``state_dict``. Priors that are tensors
        or allow-listed distributions (:data:`~ppl_models.models.registry.PRIOR_DISTRIBUTIONS`)
        with tensor arguments are saved; others (callables, transformed distributions) are
        named in ``result.json`` and replaced by the model's defaults on loading, with a
        warning.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        priors, prior_tensors, unsaved = encode_priors(self.model.priors)
        meta = {
            "format": _FORMAT,
            "model": {"name": self.model.name, "config": self.model.config(), "priors": priors},
            "priors_not_saved": unsaved,
            "method": self.method,
            "history": self.history,
            "converged": bool(self.converged),
            "n_iter": int(self.n_iter),
            "seed": self.seed,
            "fit_seconds": float(self.fit_seconds),
            "info": self.info,
            "columns": list(self.columns),
        }
        state = (
            {k: v.detach() for k, v in self.model.state_dict().items()}
            if isinstance(self.model, AmortizedModel)
            else {}
        )
        tensors = {
            "data": self.data,
            "params": dict(self.params),
            "draws": dict(self.draws) if self.draws is not None else {},
            "priors": prior_tensors,
            "state": state,
        }
        # strict JSON: a non-finite float (e.g. an energy of a failed step) is written as null
        (path / "result.json").write_text(to_json(meta))
        torch.save(tensors, path / "tensors.pt")
        return path

    @classmethod
    def load(cls, path: str | Path) -> FitResult:
        """Read a folder written by :meth:`save`, checking that its parts agree.

        Raises
        ------
        FileNotFoundError
            When ``result.json`` or ``tensors.pt`` is missing.
        ValueError
            For anything else wrong with the folder, naming the field: unreadable files, a
            recorded field of the wrong type, an unknown model or prior distribution, tensors
            that do not fit the saved configuration (number of components, covariance type,
            shapes, another model's tensors) and non-finite values.
        """
        path = Path(path)
        meta, tensors = _read(path)
        spec = meta["model"]
        if meta["priors_not_saved"]:
            warnings.warn(
                f"priors {meta['priors_not_saved']} could not be saved and are back to the "
                "defaults; fitted values and draws are unaffected",
                UserWarning,
                stacklevel=2,
            )
        priors = decode_priors(spec["priors"], tensors["priors"])
        with torch.random.fork_rng(devices=[]):  # fresh networks must not move the global RNG
            model = build_model(spec["name"], spec["config"], priors)
        check_tensors(model, tensors)
        if isinstance(model, AmortizedModel):
            _load_state(model, tensors["state"])
        return cls(
            model=model,
            method=meta["method"],
            data=tensors["data"],
            params=tensors["params"],
            draws=tensors["draws"] or None,
            history=meta["history"],
            converged=meta["converged"],
            n_iter=meta["n_iter"],
            seed=meta["seed"],
            fit_seconds=meta["fit_seconds"],
            info=meta["info"],
            columns=meta["columns"],
        )


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``result.json`` and ``tensors.pt`` with every field of the expected type."""
    try:
        meta = json.loads((path / "result.json").read_text())
        tensors = torch.load(path / "tensors.pt", weights_only=True)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no saved fit result in {path}: {exc.filename} missing") from None
    except (json.JSONDecodeError, pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"corrupt fit result in {path}: {first}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} is not a ppl-models fit result (format {found})")
    missing = sorted(set(_REQUIRED) - set(meta))
    if missing or not isinstance(tensors, dict) or not _TENSOR_KEYS <= set(tensors):
        raise ValueError(
            f"corrupt fit result in {path}: missing {missing or 'tensors'} "
            "(write it again with FitResult.save)"
        )
    tensors.setdefault("state", {})
    check_fields(meta, tensors)
    return meta, tensors


def _load_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    """The saved network weights into ``model`` (in their saved floating dtype)."""
    floating = [v.dtype for v in state.values() if v.is_floating_point()]
    if floating:
        model.to(floating[0])
    model.load_state_dict(state, strict=True)
