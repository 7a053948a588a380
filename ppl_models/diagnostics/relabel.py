"""Label switching: give the components of every posterior draw one consistent order.

A mixture's likelihood is unchanged when its components are permuted, so MCMC chains (and
different runs) may visit the same mode under different labels, and any statistic taken across
draws per component (a posterior mean, R-hat, a trace plot) mixes components. Each draw's
components are matched to a reference configuration by the assignment that minimises the summed
squared distance between their locations (the Hungarian algorithm,
:func:`scipy.optimize.linear_sum_assignment`), and every component-indexed site of the draw is
permuted alike (Stephens, 2000, "Dealing with label switching in mixture models", JRSS B, uses
the same idea with a KL loss).

What is permuted and what is matched come from the model
(:class:`~ppl_models.models.MixtureModel`): ``relabel_sites()`` names the component-indexed
sites with the axis of the component, ``location_site`` the site whose per-component values
are matched. The reference is the point estimate's locations sorted by their first coordinate
(a canonical order, ties broken by the next coordinates); the point estimate itself is permuted
to that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ppl_models.models import MixtureModel

__all__ = [
    "Relabelled",
    "canonical_order",
    "component_rows",
    "label_permutations",
    "permute_components",
    "relabel_draws",
    "relabel_result",
]


def component_rows(value: torch.Tensor, axis: int, n_batch: int) -> torch.Tensor:
    """``value`` as ``(*batch, K, F)``: its component axis (``axis``, counted from the right)
    after the ``n_batch`` leading batch dims, every other axis flattened into ``F``."""
    value = torch.as_tensor(value)
    moved = value.movedim(value.dim() + axis, n_batch)
    return moved.reshape(*moved.shape[: n_batch + 1], -1)


def canonical_order(locs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Permutation sorting components by their first feature (ties: by the next features).

    Parameters
    ----------
    locs : array (K, D)

    Returns
    -------
    ndarray of int (K,)
        ``locs[order]`` is sorted.
    """
    locs = np.asarray(torch.as_tensor(locs).detach().cpu(), dtype=float)
    if locs.ndim != 2:
        raise ValueError(f"locs must have shape (K, D); got {locs.shape}")
    # np.lexsort sorts by the last key first: feed features in reverse.
    return np.lexsort(locs.T[::-1])


def label_permutations(
    locs_draws: torch.Tensor | np.ndarray, reference_locs: torch.Tensor | np.ndarray
) -> np.ndarray:
    """Per-draw permutation matching each draw's components to the reference's.

    Parameters
    ----------
    locs_draws : array (*batch, K, D)
        Component locations of every draw.
    reference_locs : array (K, D)

    Returns
    -------
    ndarray of int (*batch, K)
        ``perm`` such that ``locs_draws[..., perm, :]`` (gathered per draw) is the relabelled
        draw: its component ``k`` is the draw's component ``perm[k]``, the one assigned to the
        reference's component ``k`` by minimum total squared distance.
    """
    locs = np.asarray(torch.as_tensor(locs_draws).detach().cpu(), dtype=float)
    ref = np.asarray(torch.as_tensor(reference_locs).detach().cpu(), dtype=float)
    if ref.ndim != 2 or locs.shape[-2:] != ref.shape:
        raise ValueError(
            f"draws' locs {locs.shape} do not end in the reference's shape {ref.shape}"
        )
    batch = locs.shape[:-2]
    k = ref.shape[0]
    flat = locs.reshape(-1, k, ref.shape[1])
    # cost[s, i, j]: squared distance between reference component i and draw component j
    cost = np.square(ref[None, :, None, :] - flat[:, None, :, :]).sum(-1)
    # a non-finite draw (e.g. a divergent transition) keeps some labelling instead of failing
    cost = np.where(np.isfinite(cost), cost, np.finfo(float).max / (4 * k))
    perms = np.empty((flat.shape[0], k), dtype=np.int64)
    for s in range(flat.shape[0]):
        rows, cols = linear_sum_assignment(cost[s])
        perms[s, rows] = cols
    return perms.reshape(*batch, k)


def permute_components(
    values: Mapping[str, torch.Tensor],
    perm: torch.Tensor | np.ndarray,
    sites: Mapping[str, int],
) -> dict[str, torch.Tensor]:
    """Permute the component axis of ``sites`` in ``values``; other entries pass through.

    Parameters
    ----------
    values : mapping of str to Tensor
        Each component site has shape ``(*batch, *site_shape)`` where ``batch`` is
        ``perm``'s batch.
    perm : array of int (*batch, K)
        One permutation per batch element (``batch`` may be empty).
    sites : mapping of str to int
        The component-indexed sites and the axis of the component, counted from the right of
        the value (``model.relabel_sites()``); names absent from ``values`` are ignored.

    Returns
    -------
    dict of str to Tensor
    """
    perm_t = torch.as_tensor(np.asarray(perm), dtype=torch.long)
    n_batch = perm_t.dim() - 1
    out = dict(values)
    for name, axis in sites.items():
        if name not in values:
            continue
        value = values[name]
        dim = value.dim() + axis
        moved = value.movedim(dim, n_batch) if dim >= n_batch else value
        if dim < n_batch or tuple(moved.shape[: n_batch + 1]) != tuple(perm_t.shape):
            raise ValueError(
                f"site '{name}' of shape {tuple(value.shape)} has no component axis {axis} "
                f"after the permutations' batch shape {tuple(perm_t.shape)}"
            )
        rest = moved.shape[n_batch + 1 :]
        index = perm_t.reshape(*perm_t.shape, *([1] * len(rest))).expand(moved.shape)
        out[name] = torch.gather(moved, n_batch, index.to(value.device)).movedim(n_batch, dim)
    return out


def relabel_draws(
    draws: Mapping[str, torch.Tensor],
    reference_locs: torch.Tensor | np.ndarray,
    *,
    sites: Mapping[str, int],
    locs_site: str = "locs",
) -> dict[str, torch.Tensor]:
    """Permute every draw's components so that its locations best match a reference.

    Parameters
    ----------
    draws : mapping of str to Tensor
        Site -> ``(chain, draw, *site_shape)``.
    reference_locs : array (K, F)
        The component rows of ``locs_site`` defining the labels (:func:`component_rows`; see
        :func:`relabel_result` for the usual choice).
    sites : mapping of str to int
        The component-indexed sites with the component's axis counted from the right
        (``model.relabel_sites()``): every one of them in ``draws`` is permuted.
    locs_site : str
        The site whose components are matched (``model.location_site``).

    Returns
    -------
    dict of str to Tensor
        The relabelled draws (same keys and shapes).
    """
    if locs_site not in draws or locs_site not in sites:
        raise ValueError(f"draws have no component site '{locs_site}' to match components by")
    locs = draws[locs_site]
    if locs.dim() + sites[locs_site] < 2:
        raise ValueError(
            f"draws['{locs_site}'] must have (chain, draw) before its components; got "
            f"{tuple(locs.shape)}"
        )
    perm = label_permutations(component_rows(locs, sites[locs_site], 2), reference_locs)
    return permute_components(draws, perm, sites)


@dataclass(frozen=True)
class Relabelled:
    """A fit's point estimate and draws under one consistent labelling.

    Attributes
    ----------
    params : dict of str to Tensor
        The point estimate, components in canonical order.
    draws : dict of str to Tensor or None
        The relabelled draws (``None`` for a point estimate).
    reference_locs : Tensor (K, F) or None
        The component rows of the location site the draws were finally matched to
        (``None`` for a model without component labels).
    permutations : ndarray of int (chain, draw, K) or None
        Per draw, which original component became component ``k``.
    applied : bool
        Whether relabelling was applied.
    note : str
        Why it was not (empty when it was).
    """

    params: dict[str, torch.Tensor]
    draws: dict[str, torch.Tensor] | None
    reference_locs: torch.Tensor | None
    permutations: np.ndarray | None
    applied: bool
    note: str = ""


def _asymmetric_fixed_site(
    model: MixtureModel, params: Mapping[str, torch.Tensor], d: int
) -> str | None:
    """A fixed component site whose value differs between components (labels identified)."""
    full = model.full_params(params, d)
    for name, axis in model.relabel_sites().items():
        if name not in full or name in params:
            continue
        value = component_rows(full[name], axis, 0)
        if value.shape[0] > 1 and not torch.all(value == value[:1]):
            return name
    return None


def relabel_result(result, *, refine: bool = True, max_iter: int = 20) -> Relabelled:
    """Canonical labels for a :class:`~ppl_models.infer.result.FitResult`.

    The point estimate ``result.params`` is sorted by the first coordinate of its locations
    (the model's ``location_site``); its sorted locations are the reference every draw is
    matched to (:func:`relabel_draws`). With ``refine``, the reference is then replaced by the
    mean of the relabelled locations and the matching repeated until the labels stop changing
    (at most ``max_iter`` rounds), so that a point estimate blurred by label switching (a
    posterior mean over switched chains) still leads to a clean labelling; component ``k``
    keeps the identity it had in the sorted point estimate.

    Nothing is permuted when the model has no component labels (it is not a
    :class:`~ppl_models.models.MixtureModel`), or when a fixed component site (a prior given as
    a tensor) differs between components: the labels are then identified by the model itself.

    Parameters
    ----------
    result : FitResult
    refine : bool
    max_iter : int

    Returns
    -------
    Relabelled
    """
    model = result.model
    params = {k: torch.as_tensor(v) for k, v in result.params.items()}
    draws = None if result.draws is None else dict(result.draws)
    if not isinstance(model, MixtureModel):
        return Relabelled(params, draws, None, None, False, "not relabelled: no component labels")
    sites, site = model.relabel_sites(), model.location_site
    axis = sites[site]
    locs = component_rows(model.full_params(params, result.n_features)[site], axis, 0)
    if model.n_components == 1:
        return Relabelled(params, draws, locs, None, True, "one component: nothing to relabel")
    fixed = _asymmetric_fixed_site(model, params, result.n_features)
    if fixed is not None:
        note = (
            f"not relabelled: the fixed site '{fixed}' differs between components, so the "
            "model identifies the labels"
        )
        return Relabelled(params, draws, locs, None, False, note)
    if site not in params or (draws is not None and site not in draws):
        note = "not relabelled: the locations are fixed, so there is nothing to match"
        return Relabelled(params, draws, locs, None, False, note)
    params = permute_components(params, canonical_order(locs), sites)
    reference = component_rows(params[site], axis, 0)
    if draws is None:
        return Relabelled(params, None, reference, None, True)
    rows = component_rows(draws[site], axis, 2)
    perm = label_permutations(rows, reference)
    for _ in range(max_iter if refine else 0):
        candidate = permute_components({site: rows}, perm, {site: -2})[site].mean(dim=(0, 1))
        new_perm = label_permutations(rows, candidate)
        reference = candidate
        if np.array_equal(new_perm, perm):
            break
        perm = new_perm
    draws = permute_components(draws, perm, sites)
    return Relabelled(params, draws, reference, perm, True)
