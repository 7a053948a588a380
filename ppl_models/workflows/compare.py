r"""Guide comparison harness: fit several guides over seeds and score them against NUTS.

For each guide family and seed, :func:`compare_guides` fits the model by SVI on a training
split, then scores the fitted guide

* as a variational approximation: the ELBO (:math:`S`-particle estimate at the final guide);
* as an importance proposal: the IWAE estimate of :math:`\log p(x_\text{train})` (Burda et al.,
  2016) and the PSIS :math:`\hat k` of its weights (Yao et al., 2018), see
  :mod:`ppl_models.workflows.importance`;
* as a predictive distribution: the held-out log pointwise predictive density;
* as a posterior: the distance of every marginal from a NUTS reference fitted on the same
  split, after relabelling (:mod:`ppl_models.workflows.distance`);
* by cost: the wall time of the fit.

It lives in ``workflows`` because it calls the drivers: diagnostics only read results. What a
fitted guide says about the posterior (Laplace's Gaussian at the mode, a point mass, draws)
comes from the guide family itself (:func:`guides.fitted_posterior`, through ``fit_svi``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyro
import torch
from tqdm.auto import tqdm

from guides import KINDS as GUIDE_KINDS
from ppl_models._shared.checks import check_float, check_int
from ppl_models._shared.jsonsafe import jsonable
from ppl_models.data import check_data
from ppl_models.infer import fit_mcmc, fit_svi
from ppl_models.infer.result import FitResult
from ppl_models.models import LatentModel
from ppl_models.workflows.distance import aggregate_distance, posterior_distance
from ppl_models.workflows.importance import heldout_lpd, importance_estimates

__all__ = [
    "DEFAULT_GUIDES",
    "METRICS",
    "GuideComparison",
    "Metric",
    "compare_guides",
    "split_data",
]

#: The guide families compared by default (the issue's list).
DEFAULT_GUIDES: tuple[str, ...] = ("map", "mean_field", "full_rank", "low_rank", "flow")


@dataclass(frozen=True)
class Metric:
    """A column of the comparison: its label and which way is better.

    ``better`` is ``"higher"``, ``"lower"`` or ``"one"`` (closer to 1 is better).
    """

    label: str
    better: str
    description: str


#: Scores per (guide, seed); the table gives each one's mean and sd over seeds.
METRICS: dict[str, Metric] = {
    "elbo": Metric("ELBO (train, nats)", "higher", "E_q[log p(x, theta) - log q(theta)]"),
    "iwae": Metric(
        "IWAE log p(train) (nats)", "higher", "log mean_s p(x, theta_s) / q(theta_s)"
    ),
    "k_hat": Metric("PSIS k-hat", "lower", "Pareto shape of the importance weights' tail"),
    "heldout_lpd": Metric(
        "held-out lpd (nats)", "higher", "sum_n log mean_s p(x_n | theta_s) over held-out rows"
    ),
    "mean_error": Metric(
        "|mean - mean_NUTS| / sd_NUTS", "lower", "mean over scalars, after relabelling"
    ),
    "sd_ratio": Metric("sd / sd_NUTS (geometric mean)", "one", "geometric mean over scalars"),
    "sd_ratio_min": Metric("min sd / sd_NUTS", "one", "smallest over scalars"),
    "wasserstein": Metric("W1 / sd_NUTS", "lower", "1-D Wasserstein, mean over scalars"),
    "fit_seconds": Metric("fit wall time (s)", "lower", "the fit alone (no scoring)"),
}

#: Seed-level columns beyond the metrics.
_EXTRA = ("objective", "ess", "converged", "n_iter")


@dataclass(frozen=True)
class GuideComparison:
    """The result of :func:`compare_guides`.

    Attributes
    ----------
    table : DataFrame
        One row per guide (index ``guide``; the reference, when fitted here or given, last as
        ``nuts``): ``method``, ``n_seeds``, and for every key of :data:`METRICS` its mean over
        seeds and ``<key>_sd``, the sd over seeds (``nan`` with one seed).
    per_seed : DataFrame
        One row per (guide, seed): every metric, plus ``objective`` (the driver's final
        objective, total nats; for ``map`` the log joint at the mode), ``ess`` (of the
        importance weights), ``converged`` and ``n_iter``.
    per_scalar : DataFrame
        One row per (guide, seed, scalar): the distances of
        :func:`~ppl_models.workflows.distance.posterior_distance`.
    reference : FitResult or None
        The NUTS reference.
    fits : dict
        ``(guide, seed) -> FitResult`` of every SVI fit.
    settings : dict
        The arguments of the run (JSON-ready).
    notes : dict of str to str
        Per guide, why some figures are missing or should be read with care.
    """

    table: pd.DataFrame
    per_seed: pd.DataFrame
    per_scalar: pd.DataFrame
    reference: FitResult | None
    fits: dict[tuple[str, int], FitResult] = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Settings, table, per-seed scores, reference facts and notes; ``nan`` -> ``None``."""
        reference = None
        if self.reference is not None:
            info = self.reference.info
            reference = {
                "method": self.reference.method,
                "num_chains": info.get("num_chains"),
                "num_samples": self.reference.n_iter,
                "warmup_steps": info.get("warmup_steps"),
                "max_r_hat": info.get("max_r_hat"),
                "divergences": info.get("divergences"),
                "fit_seconds": self.reference.fit_seconds,
                "converged": bool(self.reference.converged),
            }
        table = self.table.reset_index()
        return jsonable(
            {
                "settings": self.settings,
                "metrics": {k: {"label": m.label, "better": m.better} for k, m in METRICS.items()},
                "table": table.to_dict(orient="records"),
                "per_seed": self.per_seed.to_dict(orient="records"),
                "reference": reference,
                "notes": self.notes,
            }
        )


def _options_json(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` made JSON-ready by :func:`jsonable`; a value it cannot hold (a callable
    ``init``, an optimiser) is recorded as its ``repr``."""
    ready = {}
    for key, value in options.items():
        try:
            ready[str(key)] = jsonable(value)
        except TypeError:
            ready[str(key)] = repr(value)
    return ready


def split_data(
    data: torch.Tensor, holdout: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split rows into training and held-out sets by a seeded random permutation.

    Parameters
    ----------
    data : Tensor (N, D)
    holdout : float
        Fraction of rows held out, in ``[0, 1)``; ``round(holdout * N)`` rows.
    seed : int

    Returns
    -------
    train, test : Tensor
        ``test`` has no rows when ``holdout`` is 0. Rows keep their original order.
    """
    holdout = check_float(holdout, "holdout", minimum=0, maximum=1, strict_maximum=True)
    n = data.shape[0]
    n_test = round(holdout * n)
    if n - n_test < 2:
        raise ValueError(f"holdout={holdout} leaves {n - n_test} training rows of {n}")
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)
    test_idx = perm[:n_test].sort().values
    train_idx = perm[n_test:].sort().values
    return data[train_idx], data[test_idx]


def _guide_name(guide: str | Callable) -> str:
    return guide if isinstance(guide, str) else getattr(guide, "__name__", type(guide).__name__)


def _check_guides(kinds: Sequence[str | Callable]) -> list[str]:
    if isinstance(kinds, str) or not len(kinds):
        raise ValueError(f"guides must be a non-empty list of kinds; got {kinds!r}")
    for kind in kinds:
        if isinstance(kind, str) and kind not in GUIDE_KINDS:
            raise ValueError(
                f"unknown guide kind {kind!r}; choose from {sorted(GUIDE_KINDS)} or pass a "
                "callable"
            )
        if not isinstance(kind, str) and not callable(kind):
            raise ValueError(f"a guide must be a kind name or a callable; got {kind!r}")
    names = [_guide_name(k) for k in kinds]
    if len(set(names)) != len(names) or "nuts" in names:
        raise ValueError(f"guide names must be unique and not 'nuts'; got {names}")
    return names


def _check_seeds(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, numbers.Integral):
        return list(range(check_int(seeds, "seeds")))
    values = [check_int(s, f"seeds[{i}]", minimum=0) for i, s in enumerate(seeds)]
    if not values:
        raise ValueError("seeds must be a positive count or a non-empty list of seeds; got []")
    if len(set(values)) != len(values):
        raise ValueError(f"seeds must be distinct; got {values}")
    return values


def _fit_reference(
    reference: str | FitResult | None,
    model: Any,
    train: torch.Tensor,
    nuts: Mapping[str, Any],
    progress: bool,
    columns: list[str] | None,
) -> FitResult | None:
    if reference is None:
        return None
    if isinstance(reference, FitResult):
        if reference.draws is None:
            raise ValueError("the reference FitResult has no draws (a point estimate)")
        if reference.data.shape != train.shape or not torch.equal(
            reference.data.to(train.dtype), train
        ):
            raise ValueError(
                "the reference was fitted on other data than the training split; fit it on "
                "split_data(data, holdout, split_seed)[0]"
            )
        return reference
    if reference != "nuts":
        raise ValueError(f"reference must be 'nuts', None or a FitResult; got {reference!r}")
    return fit_mcmc(model, train, progress=progress, columns=columns, **nuts)


def _score(
    model: Any,
    fit: FitResult,
    train: torch.Tensor,
    test: torch.Tensor,
    reference: FitResult | None,
    num_particles: int,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics of one fit and its per-scalar distance table."""
    point = fit.draws is None
    row: dict[str, Any] = dict.fromkeys(METRICS, math.nan)
    row.update(ess=math.nan, converged=bool(fit.converged), n_iter=fit.n_iter)
    row["objective"] = fit.info.get("elbo", math.nan) * train.shape[0]
    row["fit_seconds"] = fit.fit_seconds
    if not point and fit.guide is not None:
        pyro.set_rng_seed(fit.seed or 0)
        est = importance_estimates(model, fit.guide, train, num_particles)
        row.update(elbo=est.elbo, iwae=est.iwae, k_hat=est.k_hat, ess=est.ess)
    row["heldout_lpd"] = heldout_lpd(model, fit.params if point else fit.draws, test)
    scalars = pd.DataFrame()
    if reference is not None:
        scalars = posterior_distance(reference, fit)
        row.update(aggregate_distance(scalars))
    return row, scalars


#: Arguments of :func:`compare_guides` that its ``svi_options`` / ``nuts_options`` may not set.
_OWN_ARGUMENTS = {
    "svi_options": {"guide", "num_steps", "seed", "num_draws", "progress"},
    "nuts_options": {"progress", "columns"},
}


def _own_options(name: str, given: Mapping[str, Any] | None, base: dict) -> dict[str, Any]:
    """``base`` updated with the user's ``given`` options, refusing the harness's own."""
    options = {**base, **dict(given or {})}
    clash = sorted(_OWN_ARGUMENTS[name] & set(options))
    if clash:
        raise ValueError(f"{name} may not set {clash}: they are arguments of compare_guides")
    return options


def _reference_row(model: Any, ref: FitResult, test: torch.Tensor) -> dict[str, Any]:
    """The per-seed row of the NUTS reference: its held-out lpd, cost and convergence."""
    row: dict[str, Any] = dict.fromkeys(METRICS, math.nan)
    row.update(
        heldout_lpd=heldout_lpd(model, ref.draws, test),
        fit_seconds=ref.fit_seconds,
        objective=math.nan,
        ess=math.nan,
        converged=bool(ref.converged),
        n_iter=ref.n_iter,
    )
    return {"guide": "nuts", "seed": ref.seed, "method": ref.method, **row}


def _per_scalar(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The per-scalar distance tables of every fit, ``guide`` and ``seed`` first."""
    if not tables:
        return pd.DataFrame()
    joined = pd.concat(tables, ignore_index=True)
    return joined[["guide", "seed", *[c for c in joined if c not in ("guide", "seed")]]]


def _summarise(per_seed: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    grouped = per_seed.groupby("guide", sort=False)
    table = pd.DataFrame(index=pd.Index(order, name="guide"))
    table["method"] = grouped["method"].first()
    table["n_seeds"] = grouped.size()
    for key in METRICS:
        table[key] = grouped[key].mean()
        table[f"{key}_sd"] = grouped[key].std(ddof=1)
    return table


def _notes(table: pd.DataFrame, point_guides: set[str], has_reference: bool) -> dict[str, str]:
    notes: dict[str, str] = {}
    for name in table.index:
        parts = []
        if name in point_guides:
            parts.append(
                "a point estimate: ELBO, IWAE and k-hat are undefined (nan; log q is a point "
                "mass), sd ratio is 0 by construction, held-out lpd uses the point"
            )
        if name == "nuts":
            parts.append("the reference posterior: its distances are 0 by definition (nan)")
        elif not has_reference:
            parts.append("no reference: distances not computed")
        k_hat = table.loc[name, "k_hat"]
        if isinstance(k_hat, float) and k_hat > 0.7:
            parts.append(
                f"k-hat {k_hat:.2f} > 0.7: the IWAE estimate of log p(x) is unreliable"
            )
        if parts:
            notes[str(name)] = "; ".join(parts)
    return notes


def compare_guides(
    model: Any,
    data: torch.Tensor,
    guides: Sequence[str | Callable] = DEFAULT_GUIDES,
    *,
    num_steps: int = 2000,
    seeds: int | Sequence[int] = 2,
    reference: str | FitResult | None = "nuts",
    holdout: float = 0.2,
    split_seed: int = 0,
    num_particles: int = 1000,
    num_draws: int = 1000,
    nuts_samples: int = 500,
    nuts_warmup: int = 500,
    nuts_chains: int = 2,
    svi_options: Mapping[str, Any] | None = None,
    nuts_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    columns: list[str] | None = None,
) -> GuideComparison:
    r"""Fit ``model`` with several guides and seeds and compare them, NUTS as the reference.

    The rows of ``data`` are split once (:func:`split_data`); every fit sees the training
    rows only. For each guide and seed :func:`~ppl_models.infer.fit_svi` runs ``num_steps``
    steps; the fitted guide is then scored (see the module docstring and :data:`METRICS`):

    * ``elbo``, ``iwae``, ``k_hat``: from ``num_particles`` importance weights
      :math:`\log p(x, \theta_s) - \log q(\theta_s)`, :math:`\theta_s \sim q`, labels summed
      out (:func:`~ppl_models.workflows.importance.importance_estimates`); all totals in nats
      over the training rows;
    * ``heldout_lpd``: :math:`\sum_n \log \frac1S \sum_s p(\tilde x_n \mid \theta_s)` over the
      held-out rows with the fit's ``num_draws`` draws;
    * ``mean_error``, ``sd_ratio``, ``sd_ratio_min``, ``wasserstein``: marginal distances
      from the reference after relabelling
      (:func:`~ppl_models.workflows.distance.posterior_distance`);
    * ``fit_seconds``: wall time of the fit.

    A point-estimate guide (``map``) has no density to weight with: its ELBO, IWAE and
    :math:`\hat k` are ``nan`` (noted in ``notes``).

    Parameters
    ----------
    model
        A model object (the finite mixtures, or any with ``log_likelihood``).
    data : Tensor (N, D)
    guides : sequence of str or callable
        Kinds of :func:`guides.build` or the user's guide callables (named by ``__name__``).
    num_steps : int
        SVI steps per fit.
    seeds : int or sequence of int
        A count (seeds ``0..n-1``) or the seeds themselves.
    reference : "nuts", None or FitResult
        ``"nuts"``: fit :func:`~ppl_models.infer.fit_mcmc` on the training rows with
        ``nuts_samples``, ``nuts_warmup``, ``nuts_chains``; ``None``: no distances; a
        FitResult with draws, fitted on ``split_data(data, holdout, split_seed)[0]``: reuse it.
    holdout : float
        Fraction of rows held out for the predictive score, in ``[0, 1)``.
    split_seed : int
        Seed of the split (and of the NUTS reference).
    num_particles : int
        Importance particles per fit (at least 10).
    num_draws : int
        Guide draws kept per fit, for the predictive score and the distances.
    nuts_samples, nuts_warmup, nuts_chains : int
    svi_options : mapping, optional
        More keyword arguments of :func:`~ppl_models.infer.fit_svi` (``lr``, ``init``,
        ``guide_options``, ...).
    nuts_options : mapping, optional
        More keyword arguments of :func:`~ppl_models.infer.fit_mcmc` (``max_tree_depth``,
        ``target_accept_prob``, ``init``, ...).
    progress : bool
        A progress bar over (guide, seed), and NUTS's own.
    columns : list of str, optional

    Returns
    -------
    GuideComparison
        ``.table`` is the per-guide DataFrame.

    Raises
    ------
    ValueError
        For an unknown guide kind, repeated names, bad seeds, a ``holdout`` outside
        ``[0, 1)``, bad counts, or a reference that is not NUTS-like or not fitted on the
        training split.
    """
    names = _check_guides(guides)
    seed_list = _check_seeds(seeds)
    check_int(num_steps, "num_steps")
    check_int(num_particles, "num_particles", minimum=10)
    check_int(num_draws, "num_draws", minimum=2)
    options = _own_options("svi_options", svi_options, {})
    nuts = _own_options(
        "nuts_options",
        nuts_options,
        {"num_samples": nuts_samples, "warmup_steps": nuts_warmup, "num_chains": nuts_chains,
         "seed": split_seed},
    )
    validate = model.validate if isinstance(model, LatentModel) else check_data
    train, test = split_data(validate(data), holdout, split_seed)
    train = validate(train)
    ref = _fit_reference(reference, model, train, nuts, progress, columns)

    rows, scalar_tables, fits = [], [], {}
    point_guides: set[str] = set()
    pairs = [(kind, name, seed) for kind, name in zip(guides, names, strict=True)
             for seed in seed_list]
    for kind, name, seed in tqdm(pairs, desc="compare guides", disable=not progress):
        fit = fit_svi(
            model, train, guide=kind, num_steps=num_steps, seed=seed, progress=False,
            num_draws=num_draws, columns=columns, **options,
        )
        fits[(name, seed)] = fit
        if fit.draws is None:
            point_guides.add(name)
        row, scalars = _score(model, fit, train, test, ref, num_particles)
        rows.append({"guide": name, "seed": seed, "method": "svi", **row})
        if not scalars.empty:
            scalar_tables.append(scalars.assign(guide=name, seed=seed))
    if ref is not None:
        rows.append(_reference_row(model, ref, test))
    per_seed = pd.DataFrame(rows, columns=["guide", "seed", "method", *METRICS, *_EXTRA])
    table = _summarise(per_seed, [*names, *(["nuts"] if ref is not None else [])])
    settings = {
        "guides": names,
        "num_steps": num_steps,
        "seeds": seed_list,
        "reference": None if ref is None else ("nuts" if isinstance(reference, str) else "given"),
        "holdout": holdout,
        "split_seed": split_seed,
        "n_train": int(train.shape[0]),
        "n_test": int(test.shape[0]),
        "num_particles": num_particles,
        "num_draws": num_draws,
        "nuts": _options_json(nuts) if isinstance(reference, str) else None,
        "svi_options": _options_json(options),
        "model": repr(model),
    }
    return GuideComparison(
        table=table,
        per_seed=per_seed,
        per_scalar=_per_scalar(scalar_tables),
        reference=ref,
        fits=fits,
        settings=settings,
        notes=_notes(table, point_guides, ref is not None),
    )
