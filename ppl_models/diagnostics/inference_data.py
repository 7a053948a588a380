"""Conversion of a :class:`~ppl_models.infer.result.FitResult` to ArviZ ``InferenceData``.

This is where tensors become NumPy/xarray. The groups are built with :func:`arviz.from_dict`
from the model's own closed forms rather than with ``arviz.from_pyro``, which cannot record the
log-likelihood of a model whose label is enumerated. Dims, derived quantities and the pointwise
log-likelihood come from the model (:class:`~ppl_models.models.LatentModel` and
:class:`~ppl_models.models.CollapsedLikelihood`); nothing here names a site.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr
from pyro import poutine

from ppl_models._arviz import az
from ppl_models._shared.jsonsafe import to_json
from ppl_models.diagnostics.relabel import (
    Relabelled,
    component_rows,
    label_permutations,
    permute_components,
    relabel_result,
)
from ppl_models.infer.result import FitResult
from ppl_models.models import CollapsedLikelihood, LatentModel, MixtureModel

__all__ = ["SE_GROUP", "SE_STATISTICS", "feature_names", "full_draws", "to_inference_data"]

#: The group of an EM fit's standard errors (``result.info["standard_errors"]``).
SE_GROUP = "standard_errors"
#: Coordinates of its ``statistic`` dim.
SE_STATISTICS = ("estimate", "se", "lower", "upper")

#: Draws per block when evaluating the pointwise log-likelihood (bounds memory to
#: block * N * K numbers).
_LOG_LIK_BLOCK = 256


def feature_names(result: FitResult) -> list[str]:
    """The result's column names, or ``x0 .. x{D-1}`` when it has none."""
    d = result.n_features
    if result.columns and len(result.columns) == d:
        return [str(c) for c in result.columns]
    return [f"x{i}" for i in range(d)]


def _numpy(value: torch.Tensor) -> np.ndarray:
    return value.detach().cpu().to(torch.float64).numpy()


def full_draws(
    model: CollapsedLikelihood, values: Mapping[str, torch.Tensor], n_features: int, n_batch: int
) -> dict[str, torch.Tensor]:
    """Site values with fixed sites filled in and broadcast to the draws' batch shape.

    Parameters
    ----------
    model : CollapsedLikelihood
        The model (provides ``full_params`` and ``site_shapes``).
    values : mapping of str to Tensor
        Latent sites, each ``(*batch, *site_shape)``.
    n_features : int
    n_batch : int
        Number of leading batch dims (2 for ``(chain, draw)``).

    Returns
    -------
    dict of str to Tensor
    """
    first = next(iter(values.values()))
    batch, dtype = tuple(first.shape[:n_batch]), first.dtype
    full = model.full_params(dict(values), n_features)
    shapes = model.site_shapes(n_features)
    out: dict[str, torch.Tensor] = {}
    for name, value in full.items():
        value = torch.as_tensor(value).to(dtype)
        if name not in values:
            if name in shapes:
                value = value.expand(*batch, *shapes[name])
            elif tuple(value.shape[:n_batch]) != batch:
                value = value.expand(*batch, *value.shape)
        out[name] = value
    return out


def _json_attr(value: Any) -> str | int | float | None:
    """``value`` as a netCDF-safe attribute, or ``None`` to skip it."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, str):
        return value
    if value is None:
        return None
    try:
        return to_json(value, indent=None).rstrip("\n")  # strict: NaN, infinities -> null
    except (TypeError, ValueError):
        return None


def _posterior_attrs(result: FitResult, relabelled: Relabelled) -> dict[str, Any]:
    point = result.draws is None
    attrs: dict[str, Any] = {
        "method": result.method,
        "point_estimate": int(point),
        "model": result.model.name,
        "converged": int(bool(result.converged)),
        "n_iter": int(result.n_iter),
        "fit_seconds": float(result.fit_seconds),
        "relabelled": int(relabelled.applied),
    }
    if relabelled.note:
        attrs["relabel_note"] = relabelled.note
    if result.seed is not None:
        attrs["seed"] = int(result.seed)
    for key, value in result.model.config().items():
        safe = _json_attr(value)
        if safe is not None:
            attrs.setdefault(key, safe)
    for key, value in result.info.items():
        if key in ("sample_stats", SE_GROUP):  # their own groups
            continue
        safe = _json_attr(value)
        if safe is not None:
            attrs.setdefault(key, safe)
    return attrs


def _standard_errors(
    result: FitResult, relabelled: Relabelled, dims: Mapping[str, list[str]],
    coords: Mapping[str, Any],
) -> xr.Dataset | None:
    """The :data:`SE_GROUP` group: per reported parameter, its estimate, standard error and
    interval (dim ``statistic``) in the posterior's component order, or ``None`` when the fit
    holds no standard errors (:func:`ppl_models.infer.standard_errors.compute_standard_errors`,
    stored in ``result.info["standard_errors"]``)."""
    table = result.info.get(SE_GROUP)
    if result.draws is not None or not isinstance(table, Mapping) or not table.get("sites"):
        return None
    sites = {
        name: {stat: torch.as_tensor(np.asarray(entry[stat], dtype=float))
               for stat in SE_STATISTICS}
        for name, entry in table["sites"].items()
    }
    model = result.model
    if isinstance(model, MixtureModel) and relabelled.applied:
        site, order = model.location_site, model.relabel_sites()
        if site in sites and site in relabelled.params:
            # The standard errors are in the fit's component order: match their estimates'
            # locations to the relabelled ones (an exact match, so the assignment is the
            # permutation relabel_result applied).
            axis = order[site]
            mine = component_rows(sites[site]["estimate"], axis, 0)
            target = component_rows(torch.as_tensor(relabelled.params[site]).double(), axis, 0)
            perm = label_permutations(mine[None], target)[0]
            for stat in SE_STATISTICS:
                permuted = permute_components(
                    {name: sites[name][stat] for name in sites}, perm, order)
                for name in sites:
                    sites[name][stat] = permuted[name]
    variables = {}
    used: dict[str, Any] = {"statistic": list(SE_STATISTICS)}
    for name, entry in sites.items():
        values = np.stack([entry[stat].numpy() for stat in SE_STATISTICS], axis=-1)
        names = list(dims.get(name, []))
        if len(names) != values.ndim - 1:
            names = [f"{name}_dim_{i}" for i in range(values.ndim - 1)]
        for dim in names:
            if dim in coords:
                used[dim] = coords[dim]
        variables[name] = ([*names, "statistic"], values)
    asymptotic = bool(table.get("asymptotic"))
    attrs = {
        "method": str(table.get("method")),
        "level": float(table.get("level", math.nan)),
        "asymptotic": int(asymptotic),
        "interval": "Wald (asymptotic)" if asymptotic else "bootstrap percentile",
        "note": str(table.get("note", "")),
        "warnings": _json_attr(list(table.get("warnings", []))),
    }
    for key in ("condition_number", "n_boot"):
        if table.get(key) is not None:
            attrs[key] = _json_attr(table[key])
    return xr.Dataset(variables, coords=used, attrs=attrs)


def _log_likelihood(
    model: CollapsedLikelihood, data: torch.Tensor, full: Mapping[str, torch.Tensor]
) -> np.ndarray:
    """``(chain, draw, N)`` pointwise log-likelihood, the label summed out, in blocks."""
    batch = next(iter(full.values())).shape[:2]
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in full.items()}
    total = batch[0] * batch[1]
    blocks = []
    with torch.no_grad():
        for start in range(0, total, _LOG_LIK_BLOCK):
            block = {k: v[start : start + _LOG_LIK_BLOCK] for k, v in flat.items()}
            blocks.append(model.log_likelihood(data, block))
    return _numpy(torch.cat(blocks, 0).reshape(*batch, data.shape[0]))


def _predictive_draws(n_chain: int, n_draw: int, num: int) -> np.ndarray:
    """Draw indices (the same in every chain) for at most ``num`` predictive data sets."""
    per_chain = max(1, min(n_draw, math.ceil(num / n_chain)))
    return np.unique(np.linspace(0, n_draw - 1, per_chain).round().astype(int))


def _simulate(model: LatentModel, params: Mapping[str, torch.Tensor], data: torch.Tensor):
    """One data set like ``data`` from the model, its latent global sites set to ``params``:
    the observed site is drawn afresh (:func:`pyro.poutine.uncondition`), every other latent
    site from its conditional."""
    simulating = poutine.condition(poutine.uncondition(model.model), data=dict(params))
    trace = poutine.trace(simulating).get_trace(data)
    return trace.nodes[model.observed_site]["value"]


def _posterior_predictive(
    result: FitResult, latent: Mapping[str, torch.Tensor], num: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(chain, m, N, D)`` simulated data sets and the posterior draw index of each."""
    n, d = result.data.shape
    data = result.data
    n_chain, n_draw = next(iter(latent.values())).shape[:2]
    point = result.draws is None
    index = np.arange(num) if point else _predictive_draws(n_chain, n_draw, num)
    out = np.empty((n_chain, len(index), n, d))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for c in range(n_chain):
            for j, s in enumerate(index):
                s_post = 0 if point else int(s)
                params = {k: v[c, s_post] for k, v in latent.items()}
                out[c, j] = _numpy(_simulate(result.model, params, data))
    return out, index


def _sample_stats(result: FitResult) -> dict[str, np.ndarray] | None:
    """NUTS's per-draw statistics as ``(chain, draw)`` arrays (``diverging`` as booleans),
    or ``None`` when the fit recorded none or they do not match the draws."""
    stats = result.info.get("sample_stats")
    if result.draws is None or not isinstance(stats, Mapping) or not stats:
        return None
    batch = tuple(next(iter(result.draws.values())).shape[:2])
    out: dict[str, np.ndarray] = {}
    for name, values in stats.items():
        array = np.asarray(values, dtype=float)
        if array.shape != batch:
            return None
        out[str(name)] = array.astype(bool) if name == "diverging" else array
    return out


def _prior_draws(
    model: LatentModel, data: torch.Tensor, sites: list[str], num: int, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``num`` draws of the global ``sites`` from the model's priors, each ``(1, num, ...)``,
    and as many data sets like ``data`` simulated from them, ``(1, num, N, D)``: one run of
    the model with its observed site drawn afresh (:func:`pyro.poutine.uncondition`) per
    draw."""
    draws: dict[str, list[np.ndarray]] = {name: [] for name in sites}
    simulated = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for _ in range(num):
            trace = poutine.trace(poutine.uncondition(model.model)).get_trace(data)
            for name in sites:
                draws[name].append(_numpy(trace.nodes[name]["value"]))
            simulated.append(_numpy(trace.nodes[model.observed_site]["value"]))
    prior = {name: np.stack(values)[None] for name, values in draws.items()}
    return prior, np.stack(simulated)[None]


def _drop_constant_entries(
    posterior: dict[str, np.ndarray], dims: dict[str, list[str]], coords: dict[str, Any]
) -> None:
    """Leave out, in place, the entries of a draws' variable that never vary (the unit
    diagonal and zero upper triangle of a correlation Cholesky factor), so that summaries
    (``az.summary``) have no NaN R-hat rows.

    A variable ``name`` with such entries keeps its leading ``component`` dim, if any; its
    other dims are stacked into one, ``name_entry``, holding only the entries that vary in
    some component, labelled by their coordinates (``"waiting, eruptions"``, so summary rows read
    ``corr_chol[0, waiting, eruptions]`` as before)."""
    for name in list(posterior):
        values = posterior[name]
        names = list(dims.get(name, []))
        if values.ndim < 3 or len(names) != values.ndim - 2:
            continue
        keep = 1 if names and names[0] == "component" else 0
        rest = values.shape[2 + keep:]
        if not rest:
            continue
        flat = values.reshape(*values.shape[: 2 + keep], -1)
        varying = np.ptp(flat, axis=(0, 1)) > 0
        if keep:
            varying = varying.any(axis=0)
        if varying.all() or not varying.any():
            continue
        grids = [np.asarray(coords[d]) if d in coords else np.arange(n)
                 for d, n in zip(names[keep:], rest, strict=True)]
        labels = [", ".join(str(g[i]) for g, i in zip(grids, index, strict=True))
                  for index in np.ndindex(*rest)]
        entry = f"{name}_entry"
        posterior[name] = flat[..., varying]
        dims[name] = [*names[:keep], entry]
        coords[entry] = [label for label, v in zip(labels, varying, strict=True) if v]


def _per_feature(site: str, values: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """``site`` split by its last (feature) axis: ``{f"{site}_{name}": values[..., j]}``."""
    return {f"{site}_{name}": values[..., j] for j, name in enumerate(names)}


def to_inference_data(
    result: FitResult,
    *,
    num_predictive: int = 200,
    num_prior: int = 100,
    seed: int = 0,
    log_likelihood: bool = True,
) -> az.InferenceData:
    """ArviZ data of a fit: posterior, posterior predictive, log-likelihood, observed data.

    Parameters
    ----------
    result : FitResult
        Any fit (EM's point estimate, an SVI guide's draws or NUTS chains) of a
        :class:`~ppl_models.models.LatentModel` with a
        :class:`~ppl_models.models.CollapsedLikelihood`.
    num_predictive : int
        At most this many simulated data sets of ``N`` rows each. With draws they are
        simulated from draws spread evenly over each chain (the same draw indices in every
        chain, recorded as the ``draw`` coordinate); for a point estimate all of them are
        simulated from the point estimate (a plug-in predictive, ``draw`` numbering the
        replicates). ``0`` leaves out the group.
    seed : int
        Seed of the simulation (the global torch RNG is restored afterwards).
    num_prior : int
        Draws from the priors for the ``prior`` and ``prior_predictive`` groups (``0``
        leaves them out).
    log_likelihood : bool
        Whether to evaluate the ``log_likelihood`` group (``chain * draw * N`` densities;
        summaries and plots do without it).

    Returns
    -------
    arviz.InferenceData
        - ``posterior``: every latent global site, components relabelled to a canonical order
          (:func:`~ppl_models.diagnostics.relabel.relabel_result`), and the model's derived
          quantities (a mixture's ``covariances`` ``(component, feature, feature_bis)``).
          With draws, entries that never vary (a correlation Cholesky factor's unit diagonal
          and zero upper triangle) are left out: such a variable keeps its ``component``
          dim and stacks the others into ``<name>_entry`` (coordinates like
          ``"waiting, eruptions"``), so ``az.summary`` has no NaN rows.
          For EM: one chain of one draw holding the point estimate, with
          ``attrs["point_estimate"] = 1`` (netCDF has no booleans: every flag in the attrs
          is 0/1). ``attrs`` also carry ``method``, the model's configuration and the
          JSON-able entries of ``result.info`` (BIC, AIC, ...; lists and dicts as JSON
          strings).
        - ``posterior_predictive``: ``x`` ``(chain, draw, obs, feature)``, and one variable
          per feature, ``x_<feature>`` ``(chain, draw, obs)`` (also in ``observed_data``), so
          ``az.plot_ppc(idata, var_names=[...])`` draws one density per feature instead of
          pooling them.
        - ``prior`` and ``prior_predictive``: ``num_prior`` draws of the global sites from
          their priors (one chain) and a data set of the data's shape simulated from each
          (``x`` and ``x_<feature>`` as above), for prior predictive checks.
        - ``log_likelihood``: ``x`` ``(chain, draw, obs)``, the pointwise
          :math:`\\log p(x_n \\mid \\theta)` with the cluster label summed out (not the
          complete-data likelihood), which is what LOO/WAIC need.
        - ``observed_data``: ``x`` ``(obs, feature)``.
        - ``standard_errors`` (an EM fit whose ``result.info`` holds them, see
          :func:`ppl_models.infer.standard_errors.compute_standard_errors`): one variable per
          reported parameter (the fitted sites and ``covariances``), with the posterior's
          dims and components in the posterior's order, plus a ``statistic`` dim
          (``estimate``, ``se``, ``lower``, ``upper``); ``attrs`` say the method, the level,
          whether the intervals are asymptotic (Wald) or bootstrap percentiles, and why they
          may not be trusted (``warnings``, a JSON list). A group of its own, outside
          ArviZ's schema, so ``az.summary`` and the posterior are untouched.
        - ``sample_stats`` (NUTS only): ``diverging``, ``energy``, ``tree_depth``,
          ``step_size``, ``acceptance_rate``, each ``(chain, draw)``, from
          ``result.info["sample_stats"]`` (:func:`ppl_models.infer.fit_mcmc`); enough for
          ``az.bfmi``, ``az.plot_energy`` and divergence overlays.

        Dims are the model's (``model.dims()``). Coordinates: ``feature`` and
        ``feature_bis`` (the column names, else ``x0``..), ``obs`` (0..N-1), ``component``
        (0..K-1) for a mixture; other dims are numbered by ArviZ. The result can be written with
        ``idata.to_netcdf(path)``.
    """
    if num_predictive < 0:
        raise ValueError(f"num_predictive must be non-negative; got {num_predictive}")
    model = result.model
    if not (isinstance(model, LatentModel) and isinstance(model, CollapsedLikelihood)):
        raise ValueError(
            f"to_inference_data needs a LatentModel with a CollapsedLikelihood (dims and the "
            f"pointwise log-likelihood); {type(model).__name__} is not one"
        )
    data = result.data
    n, d = data.shape
    relabelled = relabel_result(result)
    if relabelled.draws is None:
        latent = {k: v.unsqueeze(0).unsqueeze(0) for k, v in relabelled.params.items()}
    else:
        latent = dict(relabelled.draws)
    latent = {k: torch.as_tensor(v).detach().to(data.dtype) for k, v in latent.items()}
    if not latent:
        raise ValueError("every global site of the model is fixed: there is no posterior")
    full = full_draws(model, latent, d, 2)
    with torch.no_grad():
        derived = model.derived_quantities(full, d)

    posterior = {name: _numpy(value) for name, value in {**latent, **derived}.items()}
    names = feature_names(result)
    coords: dict[str, Any] = {"feature": names, "feature_bis": names, "obs": np.arange(n)}
    if isinstance(model, MixtureModel):
        coords["component"] = np.arange(model.n_components)
    dims = {name: list(value) for name, value in model.dims().items()}
    site = model.observed_site
    observed = {site: _numpy(data), **_per_feature(site, _numpy(data), names)}
    dims.update({f"{site}_{name}": ["obs"] for name in names})
    if result.draws is not None:
        _drop_constant_entries(posterior, dims, coords)
    groups: dict[str, Any] = {"posterior": posterior, "observed_data": observed}
    if log_likelihood:
        groups["log_likelihood"] = {model.observed_site: _log_likelihood(model, data, full)}
    stats = _sample_stats(result)
    if stats is not None:
        groups["sample_stats"] = stats
    index = None
    if num_predictive > 0:
        simulated, index = _posterior_predictive(result, latent, num_predictive, seed)
        groups["posterior_predictive"] = {site: simulated,
                                          **_per_feature(site, simulated, names)}
    if num_prior < 0:
        raise ValueError(f"num_prior must be non-negative; got {num_prior}")
    if num_prior > 0:
        prior, prior_data = _prior_draws(model, data, list(latent), num_prior, seed)
        groups["prior"] = prior
        groups["prior_predictive"] = {site: prior_data,
                                      **_per_feature(site, prior_data, names)}
    with warnings.catch_warnings():
        # ArviZ guesses from shapes whether (chain, draw) were swapped; ours are laid out
        # explicitly, and few predictive draws over several chains are intended.
        warnings.filterwarnings("ignore", message=r"More chains \(\d+\) than draws")
        idata = az.from_dict(**groups, coords=coords, dims=dims)
    idata.posterior.attrs.update(_posterior_attrs(result, relabelled))
    if index is not None:
        idata.posterior_predictive.coords["draw"] = index
        idata.posterior_predictive.attrs["point_estimate"] = int(result.draws is None)
        idata.posterior_predictive.attrs["method"] = result.method
    if log_likelihood:
        idata.log_likelihood.attrs["labels"] = "summed out: log p(x_n | theta)"
    errors = _standard_errors(result, relabelled, dims, coords)
    if errors is not None:
        idata.add_groups({SE_GROUP: errors})
    return idata
