r"""How far an approximate posterior is from a reference one, scalar by scalar.

Both posteriors are first put in one labelling: the reference's draws by
:func:`~ppl_models.diagnostics.relabel_result`, the other's draws (or point estimate) matched
to the reference's relabelled mean locations by
:func:`~ppl_models.diagnostics.relabel_draws`. Then, for every scalar :math:`j` of every global
site that varies in the reference (structural constants such as the first row of a correlation
Cholesky factor are skipped), with reference mean and standard deviation :math:`m_j, s_j` and
the approximation's :math:`\hat m_j, \hat s_j`:

* mean error :math:`|\hat m_j - m_j| / s_j`,
* sd ratio :math:`\hat s_j / s_j` (0 for a point estimate),
* scaled 1-Wasserstein distance :math:`W_1(\hat p_j, p_j) / s_j` between the two marginal
  samples (:func:`scipy.stats.wasserstein_distance`; for a point estimate the mean absolute
  deviation of the reference around it).

These are the marginal checks of Yao et al. (2018, "Yes, but did it work?", ICML, §4) with
NUTS as the reference, as in Blei, Kucukelbir & McAuliffe (2017, JASA, §5) who note that
mean-field variational inference underestimates posterior variance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from scipy.stats import wasserstein_distance

from ppl_models.diagnostics.relabel import (
    component_rows,
    label_permutations,
    permute_components,
    relabel_draws,
    relabel_result,
)
from ppl_models.infer.result import FitResult
from ppl_models.models import MixtureModel

__all__ = ["SCALAR_COLUMNS", "aggregate_distance", "posterior_distance"]

#: Columns of :func:`posterior_distance`'s table.
SCALAR_COLUMNS = (
    "site", "index", "ref_mean", "ref_sd", "mean", "sd", "mean_error", "sd_ratio", "wasserstein",
)

#: A reference scalar whose sd is at most this fraction of ``1 + |mean|`` is a constant.
_CONSTANT = 1e-6


def _flat(values: Mapping[str, torch.Tensor], n_batch: int) -> dict[str, np.ndarray]:
    """Each site as ``(draws, *site_shape)`` float64 arrays."""
    out = {}
    for name, value in values.items():
        value = torch.as_tensor(value).detach().cpu().to(torch.float64)
        out[name] = value.reshape(-1, *value.shape[n_batch:]).numpy()
    return out


def _labelled(reference: FitResult, other: FitResult):
    """Reference draws and the other fit's draws (or point) in the reference's labelling."""
    if reference.draws is None:
        raise ValueError("the reference has no draws (a point estimate cannot be a reference)")
    model = reference.model
    relabelled = relabel_result(reference)
    ref = relabelled.draws
    values = other.draws if other.draws is not None else dict(other.params)
    n_batch = 2 if other.draws is not None else 0
    matching = (
        isinstance(model, MixtureModel)
        and relabelled.applied
        and relabelled.permutations is not None
        and model.location_site in values
        and model.n_components > 1
    )
    if matching:
        sites, site = model.relabel_sites(), model.location_site
        if n_batch == 2:
            values = relabel_draws(
                values, relabelled.reference_locs, sites=sites, locs_site=site
            )
        else:
            rows = component_rows(values[site], sites[site], 0)
            perm = label_permutations(rows, relabelled.reference_locs)
            values = permute_components(values, perm, sites)
    return _flat(ref, 2), _flat(values, n_batch)


def posterior_distance(reference: FitResult, other: FitResult) -> pd.DataFrame:
    r"""Per-scalar distance of ``other``'s posterior marginals from ``reference``'s.

    Parameters
    ----------
    reference : FitResult
        Draws from the reference posterior (NUTS), ``(chain, draw, ...)``.
    other : FitResult
        Draws from an approximation (a guide), or a point estimate (``draws=None``; its
        ``params`` are used).

    Returns
    -------
    DataFrame
        One row per varying scalar, columns :data:`SCALAR_COLUMNS`: ``site``, ``index`` (e.g.
        ``"1,0"``), the reference's and the approximation's mean and sd, and the three
        distances of the module docstring.

    Raises
    ------
    ValueError
        When the reference has no draws or the two fits do not share their latent sites.
    """
    ref, approx = _labelled(reference, other)
    missing = sorted(set(ref) - set(approx))
    if missing:
        raise ValueError(f"the approximation has no values for the reference's sites {missing}")
    rows = []
    for site, ref_values in ref.items():
        values = approx[site]
        if values.shape[1:] != ref_values.shape[1:]:
            raise ValueError(
                f"site '{site}' has shape {values.shape[1:]} in the approximation but "
                f"{ref_values.shape[1:]} in the reference"
            )
        for index in np.ndindex(*ref_values.shape[1:]):
            r = ref_values[(slice(None), *index)]
            a = values[(slice(None), *index)]
            ref_mean, ref_sd = float(r.mean()), float(r.std(ddof=1))
            if ref_sd <= _CONSTANT * (1.0 + abs(ref_mean)):
                continue
            sd = float(a.std(ddof=1)) if a.shape[0] > 1 else 0.0
            rows.append(
                {
                    "site": site,
                    "index": ",".join(map(str, index)),
                    "ref_mean": ref_mean,
                    "ref_sd": ref_sd,
                    "mean": float(a.mean()),
                    "sd": sd,
                    "mean_error": abs(float(a.mean()) - ref_mean) / ref_sd,
                    "sd_ratio": sd / ref_sd,
                    "wasserstein": float(wasserstein_distance(a, r)) / ref_sd,
                }
            )
    return pd.DataFrame(rows, columns=list(SCALAR_COLUMNS))


def aggregate_distance(table: pd.DataFrame) -> dict[str, float]:
    r"""One number per distance, over the scalars of :func:`posterior_distance`'s table.

    Returns
    -------
    dict
        ``mean_error`` and ``wasserstein``: arithmetic means over scalars; ``sd_ratio``: the
        geometric mean :math:`\exp(\overline{\log(\hat s_j / s_j)})` (0 when any ratio is 0,
        e.g. a point estimate); ``sd_ratio_min``: the smallest ratio. ``nan`` for an empty
        table.
    """
    if table.empty:
        return dict.fromkeys(("mean_error", "sd_ratio", "sd_ratio_min", "wasserstein"), math.nan)
    ratios = table["sd_ratio"].to_numpy(dtype=float)
    gmean = 0.0 if np.any(ratios <= 0) else float(np.exp(np.log(ratios).mean()))
    return {
        "mean_error": float(table["mean_error"].mean()),
        "sd_ratio": gmean,
        "sd_ratio_min": float(ratios.min()),
        "wasserstein": float(table["wasserstein"].mean()),
    }
