"""The one record every driver returns, and its code-free saving and loading."""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro.distributions as dist
import torch

from ppl_models.models import MODELS

__all__ = ["FitResult"]

_FORMAT = "ppl-models/fit-result/1"
_REQUIRED = (
    "model", "priors_not_saved", "method", "history", "converged", "n_iter", "seed",
    "fit_seconds", "info", "columns",
)
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

        Nothing is pickled; :meth:`load` reads the tensors with ``weights_only=True``. Priors
        that are tensors or distributions with tensor arguments are saved; others (callables,
        transformed distributions) are named in ``result.json`` and replaced by the model's
        defaults on loading, with a warning.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        priors, prior_tensors, unsaved = _encode_priors(self.model.priors)
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
        tensors = {
            "data": self.data,
            "params": dict(self.params),
            "draws": dict(self.draws) if self.draws is not None else {},
            "priors": prior_tensors,
        }
        (path / "result.json").write_text(json.dumps(meta, indent=2))
        torch.save(tensors, path / "tensors.pt")
        return path

    @classmethod
    def load(cls, path: str | Path) -> FitResult:
        """Read a folder written by :meth:`save`."""
        path = Path(path)
        try:
            meta = json.loads((path / "result.json").read_text())
            tensors = torch.load(path / "tensors.pt", weights_only=True)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"no saved fit result in {path}: {exc.filename} missing"
            ) from None
        except (json.JSONDecodeError, pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"corrupt fit result in {path}: {first}") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{path} is not a ppl-models fit result (format {found})")
        missing = sorted(set(_REQUIRED) - set(meta))
        if missing or not isinstance(tensors, dict) or set(tensors) != _TENSOR_KEYS:
            raise ValueError(
                f"corrupt fit result in {path}: missing {missing or 'tensors'} "
                "(write it again with FitResult.save)"
            )
        spec = meta["model"]
        if spec["name"] not in MODELS:
            raise ValueError(f"unknown model '{spec['name']}' in {path}; known: {sorted(MODELS)}")
        if meta["priors_not_saved"]:
            warnings.warn(
                f"priors {meta['priors_not_saved']} could not be saved and are back to the "
                "defaults; fitted values and draws are unaffected",
                UserWarning,
                stacklevel=2,
            )
        priors = _decode_priors(spec["priors"], tensors["priors"])
        model = MODELS[spec["name"]](**spec["config"], priors=priors)
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


def _distribution_args(prior: dist.Distribution) -> dict[str, torch.Tensor] | None:
    """Constructor arguments of ``prior`` if rebuilding it from them gives it back, else None."""
    cls = getattr(dist, type(prior).__name__, None)
    if cls is not type(prior) or cls is dist.TransformedDistribution:
        return None
    args = {
        name: prior.__dict__[name]
        for name in prior.arg_constraints
        if isinstance(prior.__dict__.get(name), torch.Tensor)
    }
    if not args:
        args = {
            name: getattr(prior, name)
            for name in prior.arg_constraints
            if isinstance(getattr(prior, name, None), torch.Tensor)
        }
    if isinstance(prior, dist.LKJCholesky):
        args["dim"] = torch.tensor(prior.dim)
    try:
        rebuilt = cls(**{k: int(v) if k == "dim" else v for k, v in args.items()})
    except (TypeError, ValueError):
        return None
    if rebuilt.batch_shape != prior.batch_shape or rebuilt.event_shape != prior.event_shape:
        return None
    return args


def _encode_priors(priors: dict) -> tuple[dict, dict, list[str]]:
    described, tensors, unsaved = {}, {}, []
    for site, prior in priors.items():
        if isinstance(prior, torch.Tensor):
            described[site] = {"fixed": True}
            tensors[site] = {"value": prior}
            continue
        args = _distribution_args(prior) if isinstance(prior, dist.Distribution) else None
        if args is None:
            unsaved.append(site)
            continue
        described[site] = {"distribution": type(prior).__name__}
        tensors[site] = args
    return described, tensors, unsaved


def _decode_priors(described: dict, tensors: dict) -> dict:
    priors = {}
    for site, spec in described.items():
        if spec.get("fixed"):
            priors[site] = tensors[site]["value"]
            continue
        args = dict(tensors[site])
        if "dim" in args:
            args["dim"] = int(args["dim"])
        priors[site] = getattr(dist, spec["distribution"])(**args)
    return priors
