r"""Choosing the number of mixture components K by several criteria at once.

For each K the Gaussian mixture is fitted by EM (maximum likelihood, restarts) and, from EM's
optimum, by SVI with a full-rank Gaussian guide (or NUTS); one table then holds

* BIC :math:`= -2 \log \hat L + p \log N` and AIC :math:`= -2 \log \hat L + 2p` at EM's
  optimum (Schwarz, 1978; Akaike, 1974), lower is better;
* the PSIS-LOO estimate of the expected log predictive density of a new observation,
  :math:`\widehat{\mathrm{elpd}}_{\mathrm{loo}} = \sum_n \log p(x_n \mid x_{-n})`, with its
  standard error, from the pointwise log-likelihood (labels summed out) of posterior draws
  (Vehtari, Gelman & Gabry, 2017, "Practical Bayesian model evaluation using leave-one-out
  cross-validation and WAIC", Statistics and Computing 27:1413), higher is better;
* the ELBO :math:`\mathbb E_q[\log p(x, \theta) - \log q(\theta)] \le \log p(x)`, a lower bound
  of the log evidence, higher is better.

It is a *workflow*: it calls the drivers and the diagnostics, which never call each other.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ppl_models._arviz import az
from ppl_models._shared.checks import check_int
from ppl_models._shared.figures import agg_figure, write_png
from ppl_models._shared.jsonsafe import jsonable
from ppl_models._shared.progress import show_progress
from ppl_models.data import check_data
from ppl_models.diagnostics import loo, to_inference_data
from ppl_models.diagnostics.criteria import pareto_k_threshold
from ppl_models.infer import FitResult, fit_em, fit_mcmc, fit_svi
from ppl_models.models import GaussianMixture
from ppl_models.models.mixture import COVARIANCE_TYPES

__all__ = [
    "CRITERIA",
    "LOO_RULES",
    "POSTERIORS",
    "Criterion",
    "check_ks",
    "pareto_k_threshold",
    "plot_selection",
    "posterior_loo",
    "select_components",
    "table_to_json",
]



@dataclass(frozen=True)
class Criterion:
    """How one criterion reads the table.

    Attributes
    ----------
    column : str
        The column holding its value.
    better : {"min", "max"}
    needs : {"em", "posterior", "svi"}
        The fit it comes from.
    label : str
        Axis label of its plot panel.
    """

    column: str
    better: str
    needs: str
    label: str


#: Criteria by name (``criteria=`` of :func:`select_components`).
CRITERIA: dict[str, Criterion] = {
    "bic": Criterion("bic", "min", "em", "BIC (EM; lower is better)"),
    "aic": Criterion("aic", "min", "em", "AIC (EM; lower is better)"),
    "loo": Criterion("elpd_loo", "max", "posterior", "PSIS-LOO elpd ± SE (higher is better)"),
    "elbo": Criterion("elbo", "max", "svi", "ELBO (SVI; higher is better)"),
}

#: Ways of marking the best K by LOO (``loo_rule=``).
LOO_RULES = ("one_se", "max")


# --------------------------------------------------------------------------- posteriors
def _svi_posterior(model, data, em: FitResult, options: dict[str, Any]) -> FitResult:
    return fit_svi(
        model,
        data,
        guide="full_rank",
        num_steps=options["num_steps"],
        lr=options["lr"],
        init=dict(em.params),
        num_draws=options["num_draws"],
        seed=options["seed"],
        progress=False,
    )


def _nuts_posterior(model, data, em: FitResult, options: dict[str, Any]) -> FitResult:
    return fit_mcmc(
        model,
        data,
        num_samples=options["num_draws"],
        warmup_steps=options["warmup_steps"],
        num_chains=1,
        init=dict(em.params),
        seed=options["seed"],
        progress=False,
    )


#: Posterior approximations LOO can be computed from: name -> fit(model, data, em, options).
POSTERIORS: dict[str, Callable[..., FitResult]] = {
    "svi": _svi_posterior,
    "nuts": _nuts_posterior,
}


# --------------------------------------------------------------------------- pieces
def check_ks(ks: Sequence[int], n_obs: int | None = None) -> list[int]:
    """Validate candidate numbers of components: distinct integers from 1 to ``n_obs``.

    Returns them sorted.

    Raises
    ------
    ValueError
        For an empty list, a non-integer, K < 1, a repeated K or K above ``n_obs``.
    """
    ks = list(ks)
    if not ks:
        raise ValueError("ks is empty: give at least one number of components")
    for k in ks:
        check_int(k, "every K in ks")
    repeated = sorted({int(k) for k in ks if ks.count(k) > 1})
    if repeated:
        raise ValueError(f"ks lists K={repeated} more than once")
    if n_obs is not None and max(ks) > n_obs:
        raise ValueError(
            f"K={max(ks)} is larger than the number of observations ({n_obs}); "
            f"choose ks up to {n_obs}"
        )
    return sorted(int(k) for k in ks)


def posterior_loo(result: FitResult) -> az.ELPDData:
    """PSIS-LOO of a fit with posterior draws (labels summed out in the likelihood).

    The pointwise :math:`\\log p(x_n \\mid \\theta_s)` comes from
    :func:`~ppl_models.diagnostics.to_inference_data` and the estimate from
    :func:`~ppl_models.diagnostics.loo` (ArviZ's PSIS). ArviZ's warning about large Pareto
    :math:`\\hat k` is not raised: the estimate carries ``pareto_k`` and ``warning`` (set
    when some :math:`\\hat k` exceeds :func:`pareto_k_threshold`), for the caller to report.
    """
    idata = to_inference_data(result, num_predictive=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        return loo(idata)


def _best(values: pd.Series, better: str) -> int:
    values = values.dropna()
    return int(values.idxmin() if better == "min" else values.idxmax())


def _best_loo(table: pd.DataFrame, rule: str) -> int:
    """The K marked best by LOO: the highest elpd (``max``), or the smallest K whose elpd is
    within one standard error of the paired difference from the highest (``one_se``)."""
    top = _best(table["elpd_loo"], "max")
    if rule == "max":
        return top
    within = table.index[table["elpd_diff"] <= table["elpd_diff_se"].fillna(0.0)]
    return int(min(within)) if len(within) else top


def _paired_differences(loos: dict[int, az.ELPDData]) -> pd.DataFrame:
    r"""``elpd_diff`` and ``dse`` of every K from the K with the highest elpd.

    With pointwise :math:`d_n = \widehat{\mathrm{elpd}}_{\mathrm{top}, n} -
    \widehat{\mathrm{elpd}}_{K, n}`, the difference is :math:`\sum_n d_n` and its standard
    error :math:`\sqrt{N \operatorname{Var}(d_n)}` (Vehtari, Gelman & Gabry, 2017, eq. 24;
    the ``elpd_diff`` and ``dse`` of :func:`arviz.compare`, whose pandas calls warn under
    pandas 3).
    """
    pointwise = {k: np.asarray(v.loo_i.values, dtype=float) for k, v in loos.items()}
    top = max(pointwise, key=lambda k: pointwise[k].sum())
    rows = {}
    for k, values in pointwise.items():
        d = pointwise[top] - values
        rows[k] = {"elpd_diff": float(d.sum()), "dse": float(np.sqrt(d.size * np.var(d)))}
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- the workflow
def select_components(
    data: Any,
    ks: Sequence[int],
    criteria: Sequence[str] = ("bic", "loo", "elbo"),
    *,
    covariance_type: str = "full",
    n_init: int = 5,
    posterior: str = "svi",
    num_steps: int = 1000,
    lr: float = 0.02,
    num_draws: int = 500,
    warmup_steps: int = 300,
    loo_rule: str = "one_se",
    seed: int = 0,
    progress: bool | None = None,
) -> pd.DataFrame:
    r"""Fit a Gaussian mixture for each K and tabulate BIC, AIC, PSIS-LOO and the ELBO.

    Per K: EM with ``n_init`` restarts (:func:`~ppl_models.infer.fit_em`, maximum likelihood)
    gives BIC and AIC; from its optimum, SVI with a full-rank Gaussian guide
    (:func:`~ppl_models.infer.fit_svi`, the model's default weakly informative priors) gives
    the ELBO and, with ``posterior="svi"``, the draws for LOO; ``posterior="nuts"`` takes
    LOO's draws from NUTS instead (one chain started at EM's optimum; exact but slow).

    Parameters
    ----------
    data : Tensor or array (N, D)
    ks : sequence of int
        Candidate numbers of components (distinct, 1 to N).
    criteria : sequence of {"bic", "aic", "loo", "elbo"}
        What to compute and mark; EM always runs (it starts the other fits), so ``bic``,
        ``aic`` and ``em_log_likelihood`` are always filled.
    covariance_type : {"full", "diag", "spherical"}
    n_init : int
        EM restarts.
    posterior : {"svi", "nuts"}
        Where LOO's posterior draws come from (see :data:`POSTERIORS`).
    num_steps, lr : int, float
        SVI steps and learning rate.
    num_draws : int
        Posterior draws for LOO (guide draws, or NUTS draws after ``warmup_steps``).
    warmup_steps : int
        NUTS warm-up.
    loo_rule : {"one_se", "max"}
        ``max`` marks the highest elpd. ``one_se`` (default) marks the smallest K whose elpd
        is within one standard error of the *paired* difference from the highest
        (``elpd_diff <= elpd_diff_se``, as in ArviZ's ``compare``): the one-standard-error rule
        (Hastie, Tibshirani & Friedman, 2009, *The Elements of Statistical Learning*
        §7.10), since an extra component splitting a cluster can raise elpd by less than its
        noise (Sivula, Magnusson, Matamoros & Vehtari, 2022, on the uncertainty of elpd
        differences).
    seed : int
    progress : bool or None
        Progress bar over K (default: when standard error is a terminal).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``k``: ``bic``, ``aic``, ``em_log_likelihood`` (total, at EM's optimum),
        ``n_parameters``; with ``loo``: ``elpd_loo``, ``elpd_loo_se``, ``p_loo``,
        ``pareto_k_max``, ``elpd_diff`` and ``elpd_diff_se`` (from the highest elpd);
        with ``elbo``: ``elbo`` (total over the N observations: ``fit_svi``'s per-observation
        ELBO, averaged over its last steps, times N); and a boolean ``best_<criterion>`` per
        criterion. ``table.attrs`` holds ``best`` (criterion -> K), ``loo_highest`` (the K of
        the highest elpd, whatever ``loo_rule``), ``criteria``,
        ``posterior``, ``loo_rule``, ``n_obs``, ``seconds`` and ``warnings`` (every warning
        (``UserWarning``) raised by the fits and by PSIS, prefixed with its K: they are
        collected here, not re-raised, so that one table reports them all).

    Notes
    -----
    The ELBO of a unimodal guide covers one of the :math:`K!` relabelled copies of the
    posterior, so it bounds :math:`\log p(x) - \log K!` rather than :math:`\log p(x)` when
    the components are well separated; it therefore leans towards smaller K.

    Raises
    ------
    ValueError
        For bad data, ks, criteria, posterior or rule.
    """
    data = check_data(data)
    n = int(data.shape[0])
    ks = check_ks(ks, n)
    criteria = list(dict.fromkeys(criteria))
    unknown = sorted(set(criteria) - set(CRITERIA))
    if unknown or not criteria:
        raise ValueError(f"unknown criteria {unknown or criteria}; choose from {sorted(CRITERIA)}")
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior must be one of {sorted(POSTERIORS)}; got {posterior!r}")
    if loo_rule not in LOO_RULES:
        raise ValueError(f"loo_rule must be one of {LOO_RULES}; got {loo_rule!r}")
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}; got {covariance_type!r}"
        )
    options = {
        "num_steps": num_steps,
        "lr": lr,
        "num_draws": num_draws,
        "warmup_steps": warmup_steps,
        "seed": seed,
    }
    # fit_svi/fit_mcmc fail on float64 data for K=1 (the fixed K=1 weight is float32), so the
    # posterior fits run in the default dtype; EM runs in float64 either way.
    posterior_data = data.to(torch.get_default_dtype())
    progress = show_progress(progress)
    start = time.perf_counter()
    rows: dict[int, dict[str, float | int]] = {}
    loos: dict[int, az.ELPDData] = {}
    notes: list[str] = []
    for k in tqdm(ks, desc="select K", disable=not progress, leave=False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            rows[k], elpd = _one_k(k, data, posterior_data, criteria, covariance_type, n_init,
                                   posterior, options)
        if elpd is not None:
            loos[k] = elpd
        notes.extend(_notes(k, caught))
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "k"
    if loos:
        compared = _paired_differences(loos)
        table["elpd_diff"] = compared["elpd_diff"].reindex(table.index).astype(float)
        table["elpd_diff_se"] = compared["dse"].reindex(table.index).astype(float)
    best: dict[str, int] = {}
    for name in criteria:
        spec = CRITERIA[name]
        best[name] = (
            _best_loo(table, loo_rule) if name == "loo" else _best(table[spec.column], spec.better)
        )
        table[f"best_{name}"] = table.index == best[name]
    table.attrs.update(
        {
            "best": best,
            "loo_highest": _best(table["elpd_loo"], "max") if "elpd_loo" in table else None,
            "criteria": criteria,
            "posterior": posterior,
            "loo_rule": loo_rule,
            "covariance_type": covariance_type,
            "n_obs": n,
            "n_features": int(data.shape[1]),
            "seconds": time.perf_counter() - start,
            "warnings": notes,
        }
    )
    return table


def _one_k(
    k: int,
    data: torch.Tensor,
    posterior_data: torch.Tensor,
    criteria: list[str],
    covariance_type: str,
    n_init: int,
    posterior: str,
    options: dict[str, Any],
) -> tuple[dict[str, float | int], az.ELPDData | None]:
    """The row of one K (and its LOO object for the comparison)."""
    model = GaussianMixture(k, covariance_type)
    em = fit_em(model, data, n_init=n_init, seed=options["seed"], progress=False)
    row: dict[str, float | int] = {
        "bic": float(em.info["bic"]),
        "aic": float(em.info["aic"]),
        "em_log_likelihood": float(em.info["log_likelihood"]),
        "n_parameters": int(em.info["n_parameters"]),
    }
    svi = None
    if "elbo" in criteria or ("loo" in criteria and posterior == "svi"):
        svi = _svi_posterior(model, posterior_data, em, options)
    if "elbo" in criteria:
        row["elbo"] = float(svi.info["elbo"]) * data.shape[0]
    elpd = None
    if "loo" in criteria:
        draws = svi if posterior == "svi" else POSTERIORS[posterior](
            model, posterior_data, em, options
        )
        elpd = posterior_loo(draws)
        row.update(
            {
                "elpd_loo": float(elpd.elpd_loo),
                "elpd_loo_se": float(elpd.se),
                "p_loo": float(elpd.p_loo),
                "pareto_k_max": float(np.max(elpd.pareto_k.values)),
            }
        )
        threshold = pareto_k_threshold(int(elpd.n_samples))
        if row["pareto_k_max"] > threshold:
            n_high = int(np.sum(elpd.pareto_k.values > threshold))
            warnings.warn(
                f"PSIS-LOO may be unreliable: {n_high} observation(s) with Pareto k above "
                f"{threshold:.2f} (max {row['pareto_k_max']:.2f})",
                UserWarning,
                stacklevel=2,
            )
    return row, elpd


def _notes(k: int, caught: list[warnings.WarningMessage]) -> list[str]:
    out: list[str] = []
    for w in caught:
        first = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
        text = f"K={k}: {first.split('. ')[0].rstrip('.')}"
        if text not in out:
            out.append(text)
    return out


# --------------------------------------------------------------------------- plot

def plot_selection(table: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """One panel per criterion against K, the K marked best circled in red.

    BIC and AIC share a panel; LOO's elpd has ±1 SE bars. Reads the table of
    :func:`select_components` (only the columns present are drawn).

    Parameters
    ----------
    table : pandas.DataFrame
    path : str or Path, optional
        Where to write the PNG.

    Returns
    -------
    matplotlib.figure.Figure
    """
    panels = [
        [name for name in ("bic", "aic") if name in table],
        ["elpd_loo"] if "elpd_loo" in table else [],
        ["elbo"] if "elbo" in table else [],
    ]
    panels = [p for p in panels if p]
    if not panels:
        raise ValueError("the table has no criterion column (bic, aic, elpd_loo, elbo)")
    by_column = {spec.column: name for name, spec in CRITERIA.items()}
    fig = agg_figure(4.0 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    ks = np.asarray(table.index, dtype=int)
    for ax, columns in zip(axes, panels, strict=True):
        for i, column in enumerate(columns):
            values = table[column].to_numpy(dtype=float)
            color = f"C{i}"
            if column == "elpd_loo":
                ax.errorbar(ks, values, yerr=table["elpd_loo_se"].to_numpy(dtype=float),
                            marker="o", color=color, capsize=3, label="elpd_loo")
            else:
                ax.plot(ks, values, marker="o", color=color, label=column)
            flag = f"best_{by_column[column]}"
            if flag in table and table[flag].any():
                k_best = int(table.index[table[flag].to_numpy(dtype=bool)][0])
                ax.plot([k_best], [table.loc[k_best, column]], marker="o", ms=14,
                        mfc="none", mec="red", mew=2, label=f"best {column}: K={k_best}")
        ax.set_xticks(ks)
        ax.set_xlabel("K")
        ax.set_ylabel(CRITERIA[by_column[columns[0]]].label if len(columns) == 1
                      else "information criterion (lower is better)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_png(fig, path)
    return fig


def table_to_json(table: pd.DataFrame) -> dict[str, Any]:
    """The table and its attrs as JSON-safe Python values (NaN and inf become ``None``)."""
    rows = {str(k): dict(row.items()) for k, row in table.iterrows()}
    return jsonable({**table.attrs, "table": rows})
