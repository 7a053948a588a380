"""Posterior summary tables and leave-one-out cross-validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ppl_models._arviz import az
from ppl_models.diagnostics.inference_data import SE_GROUP, SE_STATISTICS, to_inference_data
from ppl_models.infer.result import FitResult

__all__ = ["is_point_estimate", "loo", "se_columns", "summarize"]


def is_point_estimate(idata: az.InferenceData) -> bool:
    """Whether ``idata``'s posterior is a point estimate (EM) rather than draws."""
    return bool(int(idata.posterior.attrs.get("point_estimate", 0)))


def _label(name: str, coords: Sequence) -> str:
    """ArviZ's label of one entry: ``name[c1, c2]`` (just ``name`` for a scalar)."""
    return f"{name}[{', '.join(str(c) for c in coords)}]" if len(coords) else name


def _entries(
    idata: az.InferenceData, var_names: Sequence[str] | None
) -> tuple[list[str], np.ndarray, list[str]]:
    """Every scalar entry of the posterior variables as ``(chain, draw, entry)``, with labels.

    Returns the labels, the stacked values and the labels of the entries that are constant
    across all draws (structural zeros and ones of ``corr_chol``, fixed values), which are
    left out of the values.
    """
    posterior = idata.posterior
    names = list(posterior.data_vars) if var_names is None else list(var_names)
    missing = sorted(set(names) - set(posterior.data_vars))
    if missing:
        raise ValueError(f"no posterior variable(s) {missing}; have {list(posterior.data_vars)}")
    labels: list[str] = []
    constant: list[str] = []
    columns: list[np.ndarray] = []
    for name in names:
        da = posterior[name].transpose("chain", "draw", ...)
        entry_dims = list(da.dims[2:])
        values = np.asarray(da.values, dtype=float)
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        grids = [np.asarray(da.coords[dim].values) for dim in entry_dims]
        for j, index in enumerate(np.ndindex(*values.shape[2:])):
            label = _label(name, [g[i] for g, i in zip(grids, index, strict=True)])
            column = flat[:, :, j]
            if column.size > 1 and np.all(column == column.flat[0]):
                constant.append(label)
                continue
            labels.append(label)
            columns.append(column)
    if not columns:
        raise ValueError(f"the posterior variables {names} are constant: nothing to summarise")
    return labels, np.stack(columns, axis=-1), constant


def se_columns(level: float) -> tuple[str, str]:
    """Names of the interval columns at ``level``: ``("lower_95", "upper_95")`` for 0.95."""
    percent = f"{100 * level:.10g}".replace(".", "_")
    return f"lower_{percent}", f"upper_{percent}"


def _point_table(idata: az.InferenceData, var_names: Sequence[str] | None) -> pd.DataFrame:
    method = str(idata.posterior.attrs.get("method", "point"))
    labels: list[str] = []
    values: list[float] = []
    errors: list[np.ndarray] = []
    posterior = idata.posterior
    group = idata[SE_GROUP] if SE_GROUP in idata.groups() else None
    missing = np.full(len(SE_STATISTICS), np.nan)
    names = list(posterior.data_vars) if var_names is None else list(var_names)
    for name in names:
        da = posterior[name].isel(chain=0, draw=0)
        se = None
        if group is not None and name in group.data_vars:
            se = group[name].transpose(*da.dims, "statistic").sel(statistic=list(SE_STATISTICS))
        grids = [np.asarray(da.coords[dim].values) for dim in da.dims]
        for index in np.ndindex(*da.shape):
            labels.append(_label(name, [g[i] for g, i in zip(grids, index, strict=True)]))
            values.append(float(da.values[index]))
            errors.append(missing if se is None else np.asarray(se.values[index], dtype=float))
    table = pd.DataFrame(
        {"value": values, "method": f"{method} point estimate"}, index=pd.Index(labels)
    )
    if group is None:
        return table
    stats = dict(zip(SE_STATISTICS, np.stack(errors, axis=1), strict=True))
    lower, upper = se_columns(float(group.attrs["level"]))
    asymptotic = bool(int(group.attrs.get("asymptotic", 0)))
    table["se"] = stats["se"]
    table[lower] = stats["lower"]
    table[upper] = stats["upper"]
    if asymptotic:
        table["interval"] = "asymptotic Wald (observed information)"
    else:
        table["interval"] = f"parametric bootstrap percentile (B={group.attrs.get('n_boot')})"
    return table


def summarize(
    result_or_idata: FitResult | az.InferenceData,
    *,
    var_names: Sequence[str] | None = None,
    hdi_prob: float = 0.94,
    round_to: int | str | None = None,
) -> pd.DataFrame:
    """A summary table of the (relabelled) posterior.

    Parameters
    ----------
    result_or_idata : FitResult or arviz.InferenceData
        A fit (converted with :func:`~ppl_models.diagnostics.to_inference_data`, posterior
        only) or its ArviZ data.
    var_names : sequence of str, optional
        Posterior variables to summarise (default: all, i.e. the sites and ``covariances``).
    hdi_prob : float
        Probability mass of the highest-density intervals.
    round_to : int or "none", optional
        Passed to :func:`arviz.summary`.

    Returns
    -------
    pandas.DataFrame
        One row per scalar entry, labelled as ArviZ does (``locs[0, eruptions]``).

        - Draws: :func:`arviz.summary`'s columns. With two chains or more, ``kind="all"``
          (mean, sd, HDI, ``mcse_*``, ``ess_bulk``, ``ess_tail``, ``r_hat``); with one chain
          (an SVI guide's independent draws) the statistics only. Entries constant across all
          draws (the upper triangle and first diagonal entry of ``corr_chol``) are left out:
          their R-hat is undefined.
        - Point estimate (EM): columns ``value`` and ``method`` (``"em point estimate"``), no
          R-hat or ESS. When the ArviZ data hold standard errors (the ``standard_errors``
          group of :func:`~ppl_models.diagnostics.to_inference_data`), also ``se``, the
          interval ``lower_95`` / ``upper_95`` (named by the level) and ``interval``, which
          says whether it is an asymptotic Wald interval (observed information) or a
          parametric bootstrap percentile interval; a parameter without one gets NaN.
    """
    if isinstance(result_or_idata, FitResult):
        idata = to_inference_data(result_or_idata, num_predictive=0, num_prior=0,
                                  log_likelihood=False)
    else:
        idata = result_or_idata
    if is_point_estimate(idata):
        return _point_table(idata, var_names)
    labels, stacked, _ = _entries(idata, var_names)
    n_chains = stacked.shape[0]
    kind = "all" if n_chains >= 2 else "stats"
    entries = az.convert_to_inference_data({"entries": stacked}, coords={}, dims={})
    table = az.summary(
        entries,
        var_names=["entries"],
        kind=kind,
        hdi_prob=hdi_prob,
        round_to=round_to,
    )
    table.index = pd.Index(labels)
    return table


def loo(idata: az.InferenceData, *, scale: str | None = None) -> az.ELPDData:
    """Pareto-smoothed importance-sampling leave-one-out cross-validation (PSIS-LOO).

    A thin wrapper of :func:`arviz.loo` with ``pointwise=True``. The ``log_likelihood`` group
    written by :func:`~ppl_models.diagnostics.to_inference_data` holds
    :math:`\\log p(x_n \\mid \\theta)` with the cluster label summed out, so this is the
    predictive accuracy of the mixture density for a new observation (not of a labelled
    one).

    Parameters
    ----------
    idata : arviz.InferenceData
        With posterior draws and a ``log_likelihood`` group.
    scale : {"log", "negative_log", "deviance"}, optional
        Passed to :func:`arviz.loo`.

    Returns
    -------
    arviz.ELPDData
        ``elpd_loo``, ``p_loo``, ``pareto_k`` per observation, ...

    Raises
    ------
    ValueError
        For a point estimate (EM): LOO needs posterior draws.
    """
    if is_point_estimate(idata):
        raise ValueError(
            "LOO needs posterior draws; EM gives a point estimate (compare EM fits by "
            "posterior.attrs['bic'] / ['aic'] instead)"
        )
    if "log_likelihood" not in idata.groups():
        raise ValueError("idata has no log_likelihood group")
    return az.loo(idata, pointwise=True, scale=scale)
