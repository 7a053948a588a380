r"""Simulation-based calibration (SBC) of any model and fitting method.

If :math:`\tilde\theta \sim p(\theta)`, :math:`\tilde x \sim p(x \mid \tilde\theta)` and
:math:`\theta_1, \dots, \theta_L` are independent draws of the posterior
:math:`p(\theta \mid \tilde x)`, then for every scalar function :math:`f` the rank

.. math:: r = \#\{\, l : f(\theta_l) < f(\tilde\theta) \,\} \in \{0, \dots, L\}

is uniformly distributed (Talts, Betancourt, Simpson, Vehtari & Gelman, 2018, "Validating
Bayesian inference algorithms with simulation-based calibration", arXiv:1804.06788, Theorem 1).
An algorithm whose draws are not the posterior's breaks the uniformity in telling ways: ranks
piled at both ends mean draws too narrow (under-dispersed, the known failure of mean-field
variational inference on correlated posteriors), a hump in the middle too wide, a slope a bias.

This module repeats prior draw -> simulation -> fit -> ranks, and tests the ranks' uniformity
per scalar two ways: Pearson's chi-square on binned ranks, and the simultaneous ECDF test of
Säilynoja, Bürkner & Vehtari (2022, "Graphical test for discrete uniformity and its
applications in goodness-of-fit evaluation and multiple sample comparison", Statistics and
Computing 32:32). It is a *workflow*: it calls a fitting driver many times, so it lives above
the drivers and the diagnostics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from scipy import stats
from tqdm.auto import tqdm

from ppl_models._shared.checks import check_float, check_int
from ppl_models._shared.figures import agg_figure, write_png
from ppl_models._shared.progress import show_progress
from ppl_models.diagnostics.relabel import component_rows, permute_components
from ppl_models.infer.result import FitResult
from ppl_models.models import LatentModel, MixtureModel

__all__ = [
    "SBCResult",
    "bin_probabilities",
    "check_data_independent_priors",
    "chi_square_uniformity",
    "ecdf_band",
    "ecdf_gamma",
    "global_latent_names",
    "null_ecdf_gamma",
    "simulation_based_calibration",
]

#: Null simulations of the ECDF test statistic (its p-values resolve 1 / (this + 1)).
_NUM_NULL = 2000


# --------------------------------------------------------------------------- uniformity tests
def bin_probabilities(num_ranks: int, num_bins: int) -> np.ndarray:
    """Probability of each rank bin under uniform ranks on ``{0, ..., L}``.

    Rank ``r`` falls in bin ``floor(r * B / (L + 1))``; when ``B`` does not divide ``L + 1``
    the bins hold unequal numbers of rank values, and their probabilities say so exactly.
    """
    values = np.arange(num_ranks + 1)
    counts = np.bincount(values * num_bins // (num_ranks + 1), minlength=num_bins)
    return counts / (num_ranks + 1)


def chi_square_uniformity(
    ranks: np.ndarray, num_ranks: int, num_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pearson's chi-square statistic and p-value of binned ranks, per column.

    Parameters
    ----------
    ranks : ndarray of int (R, S)
    num_ranks : int
        L (ranks run from 0 to L).
    num_bins : int
        B bins; the statistic has B - 1 degrees of freedom.
    """
    expected = bin_probabilities(num_ranks, num_bins) * ranks.shape[0]
    binned = ranks * num_bins // (num_ranks + 1)
    observed = np.stack([np.bincount(c, minlength=num_bins) for c in binned.T], axis=1)
    result = stats.chisquare(observed, expected[:, None], axis=0)
    return np.asarray(result.statistic), np.asarray(result.pvalue)


def _ecdf_counts(ranks: np.ndarray, num_ranks: int) -> np.ndarray:
    """``counts[..., j] = #{r <= j}`` for ``j = 0 .. L - 1`` along the last axis of ranks."""
    flat = ranks.reshape(-1, ranks.shape[-1])
    offsets = np.arange(flat.shape[0])[:, None] * (num_ranks + 1)
    counts = np.bincount((flat + offsets).ravel(), minlength=flat.shape[0] * (num_ranks + 1))
    counts = counts.reshape(*ranks.shape[:-1], num_ranks + 1)
    return np.cumsum(counts, axis=-1)[..., :num_ranks]


def ecdf_gamma(ranks: np.ndarray, num_ranks: int) -> np.ndarray:
    r"""The statistic of the simultaneous ECDF test, per sample (last axis: replicates).

    With :math:`c_j = \#\{i : r_i \le j\}` and :math:`z_j = (j + 1) / (L + 1)` (the uniform
    CDF), :math:`c_j \sim \mathrm{Binomial}(R, z_j)` under uniformity and

    .. math:: \gamma = \min_j 2 \min\{F_{R, z_j}(c_j),\ 1 - F_{R, z_j}(c_j - 1)\}

    is the smallest two-sided pointwise tail probability of the ECDF (Säilynoja et al., 2022,
    §2); small values mean the ECDF left the region uniform ranks visit.
    """
    counts = _ecdf_counts(ranks, num_ranks)
    r = ranks.shape[-1]
    z = np.arange(1, num_ranks + 1) / (num_ranks + 1)
    lower = stats.binom.cdf(counts, r, z)
    upper = stats.binom.sf(counts - 1, r, z)
    return np.minimum(1.0, 2.0 * np.minimum(lower, upper).min(axis=-1))


def null_ecdf_gamma(
    num_replicates: int, num_ranks: int, num_simulations: int, seed: int
) -> np.ndarray:
    """:func:`ecdf_gamma` of ``num_simulations`` samples of exactly uniform ranks."""
    rng = np.random.default_rng(seed)
    return ecdf_gamma(
        rng.integers(0, num_ranks + 1, size=(num_simulations, num_replicates)), num_ranks
    )


def ecdf_band(
    null_gamma: np.ndarray, num_replicates: int, num_ranks: int, prob: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simultaneous ``prob`` band of the rank ECDF under uniformity.

    The pointwise level :math:`1 - \\gamma_{1 - prob}` (the ``1 - prob`` quantile of the null
    statistic) makes the pointwise binomial intervals a simultaneous band (Säilynoja et al.,
    2022, Algorithm 1; ArviZ's ``ecdf_confidence_band(method="simulated")`` does the same).

    Returns
    -------
    z, lower, upper : ndarray (L,)
        Evaluation points (the uniform CDF) and the band of the ECDF there.
    """
    z = np.arange(1, num_ranks + 1) / (num_ranks + 1)
    gamma = float(np.quantile(null_gamma, 1.0 - prob))
    low, high = stats.binom.interval(1.0 - gamma, num_replicates, z)
    return z, low / num_replicates, high / num_replicates


# --------------------------------------------------------------------------- the result

@dataclass(frozen=True)
class SBCResult:
    """Ranks of an SBC run and their uniformity tests.

    Attributes
    ----------
    ranks : ndarray of int (num_replicates, num_scalars)
        Per replicate and scalar parameter, how many of the ``num_ranks`` kept posterior
        draws were smaller than the true value (0 .. ``num_ranks``).
    num_ranks : int
        L, the posterior draws kept per fit.
    names : list of str
        The scalars, labelled as ArviZ does (``locs[0, 1]``).
    truth : ndarray (num_replicates, num_scalars)
        The prior draws the data were simulated from.
    table : pandas.DataFrame
        Per scalar: ``chi2`` and ``chi2_p_value`` (binned ranks), ``ecdf_p_value``
        (simultaneous ECDF test), ``mean_rank`` (mean of r / L; 0.5 when unbiased) and
        ``dispersion`` (sd of the ranks over the uniform one's: above 1, ranks crowd at the
        ends, i.e. the posterior draws are too narrow; below 1, too wide).
    num_bins : int
        Bins of the chi-square test and of the histograms.
    method : str
        The fitting method (``FitResult.method``) and guide if any.
    seconds : float
        Wall time of the whole run.
    seed : int
    dropped : list of str
        Scalars left out because their true value never varies (structural zeros and ones
        of a Cholesky factor).
    null_gamma : ndarray
        Null simulations of the ECDF statistic (for the bands of :meth:`plot`).
    """

    ranks: np.ndarray
    num_ranks: int
    names: list[str]
    truth: np.ndarray
    table: pd.DataFrame
    num_bins: int
    method: str
    seconds: float
    seed: int
    dropped: list[str] = field(default_factory=list)
    null_gamma: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    @property
    def num_replicates(self) -> int:
        return int(self.ranks.shape[0])

    @property
    def chi2_p_value(self) -> float:
        """Bonferroni-adjusted smallest chi-square p-value over the scalars."""
        return _bonferroni(self.table["chi2_p_value"].to_numpy())

    @property
    def ecdf_p_value(self) -> float:
        """Bonferroni-adjusted smallest ECDF-test p-value over the scalars."""
        return _bonferroni(self.table["ecdf_p_value"].to_numpy())

    @property
    def p_value(self) -> float:
        """One overall p-value: Bonferroni over every scalar and both tests (conservative:
        the tests and scalars are dependent, Bonferroni needs no independence)."""
        return _bonferroni(self.table[["chi2_p_value", "ecdf_p_value"]].to_numpy().ravel())

    def calibrated(self, alpha: float = 0.01) -> bool:
        """Whether uniformity survives at level ``alpha`` (``p_value >= alpha``)."""
        return self.p_value >= alpha

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures of the run."""
        return {
            "method": self.method,
            "num_replicates": self.num_replicates,
            "num_ranks": self.num_ranks,
            "num_bins": self.num_bins,
            "p_value": self.p_value,
            "chi2_p_value": self.chi2_p_value,
            "ecdf_p_value": self.ecdf_p_value,
            "seconds": self.seconds,
            "seed": self.seed,
            "dropped": list(self.dropped),
            "scalars": {
                name: {k: float(v) for k, v in row.items()}
                for name, row in self.table.iterrows()
            },
        }

    def plot(
        self,
        path: str | Path | None = None,
        *,
        prob: float = 0.95,
        max_scalars: int = 8,
    ) -> Figure:
        """Rank histograms and ECDF differences, one row per scalar (the first few).

        Left: the rank histogram in :attr:`num_bins` bins with the central ``prob`` interval
        of each bin's count under uniformity (binomial, pointwise). Right: the ECDF of
        ``r / (L + 1)`` minus the uniform CDF, with the simultaneous ``prob`` band of
        :func:`ecdf_band` (Säilynoja et al., 2022): under calibration the whole curve stays
        inside it with probability ``prob``. A U-shaped histogram / an ECDF difference that
        dives then rises is under-dispersion.

        Parameters
        ----------
        path : str or Path, optional
            Where to write the PNG.
        prob : float
            Coverage of the bands.
        max_scalars : int
            Rows drawn at most (the scalars with the smallest ECDF p-values first).
        """
        check_float(prob, "prob", minimum=0, maximum=1, strict_minimum=True, strict_maximum=True)
        order = np.argsort(self.table["ecdf_p_value"].to_numpy(), kind="stable")
        order = order[: max(1, int(max_scalars))]
        r, bins, ell = self.num_replicates, self.num_bins, self.num_ranks
        fig = agg_figure(9.0, 2.4 * len(order))
        axes = fig.subplots(len(order), 2, squeeze=False)
        p_bin = bin_probabilities(ell, bins)
        low, high = stats.binom.interval(prob, r, p_bin)
        z, band_low, band_high = ecdf_band(self.null_gamma, r, ell, prob)
        for row, j in enumerate(order):
            name, ranks = self.names[j], self.ranks[:, j]
            hist_ax, ecdf_ax = axes[row]
            counts = np.bincount(ranks * bins // (ell + 1), minlength=bins)
            edges = np.arange(bins + 1) - 0.5
            hist_ax.stairs(high, edges, baseline=low, fill=True, color="0.85")
            hist_ax.bar(np.arange(bins), counts, width=0.9, color="C0")
            hist_ax.stairs(p_bin * r, edges, color="0.3", lw=1)
            hist_ax.set_ylabel(name)
            hist_ax.set_xticks([])
            ecdf = _ecdf_counts(ranks[None, :], ell)[0] / r
            ecdf_ax.fill_between(z, band_low - z, band_high - z, color="0.85", step="post")
            ecdf_ax.step(z, ecdf - z, where="post", color="C0")
            ecdf_ax.axhline(0.0, color="0.3", lw=1)
            row_stats = self.table.iloc[j]
            ecdf_ax.set_title(
                f"ECDF p={row_stats['ecdf_p_value']:.3g}, chi2 p={row_stats['chi2_p_value']:.3g}, "
                f"dispersion {row_stats['dispersion']:.2f}",
                fontsize=8,
            )
        axes[0, 0].set_title(f"rank histogram ({r} replicates, L={ell})", fontsize=8)
        axes[-1, 0].set_xlabel("rank bin")
        axes[-1, 1].set_xlabel("fractional rank")
        fig.suptitle(f"SBC of {self.method}: overall p = {self.p_value:.3g}", fontsize=10)
        fig.tight_layout()
        write_png(fig, path)
        return fig


def _bonferroni(p_values: np.ndarray) -> float:
    p_values = np.asarray(p_values, dtype=float)
    return float(min(1.0, p_values.size * p_values.min())) if p_values.size else 1.0


# --------------------------------------------------------------------------- the workflow
def _simulate(model: Any, n_obs: int, n_features: int):
    """One traced run of the model with no data: it draws the globals and simulates."""
    return poutine.trace(model.model).get_trace(None, n_obs=n_obs, n_features=n_features)


def global_latent_names(model: LatentModel, n_obs: int, n_features: int) -> list[str]:
    """The global latent sites of a simulating run, in model order.

    Latent: sampled and not a plate's subsample; global: outside the model's ``local_plate``
    (which holds the per-observation labels and the simulated data) and not enumerated.
    """
    local_plate = model.local_plate
    enumerated = set(model.enumerated_sites)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        trace = _simulate(model, n_obs, n_features)
    names = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if name in enumerated or any(f.name == local_plate for f in site["cond_indep_stack"]):
            continue
        names.append(name)
    return names


def check_data_independent_priors(model: Any, n_obs: int, n_features: int) -> list[str]:
    """The model's global latent sites, after checking their priors ignore the data.

    SBC draws the parameters from the prior *before* any data exist and then conditions on
    simulated data; if the fit's prior is recomputed from those data (the mixtures' default
    priors are centred and scaled on them) the two priors differ and the ranks are not uniform
    even for exact inference. Every latent global site therefore needs an explicit
    distribution in ``model.priors`` (a callable ``data -> distribution`` is refused too).

    Raises
    ------
    ValueError
        Naming the sites that need a prior.
    """
    if not isinstance(model, LatentModel):
        raise ValueError(
            "SBC needs priors that do not depend on the data, stated in model.priors; "
            f"{type(model).__name__} is not a LatentModel"
        )
    latent = global_latent_names(model, n_obs, n_features)
    priors = model.priors
    missing = [s for s in latent if not isinstance(priors.get(s), torch.distributions.Distribution)]
    if missing:
        raise ValueError(
            f"SBC needs priors that do not depend on the data: give priors for {missing} "
            "(a distribution, not a callable; the default priors are centred and scaled on "
            "the data)"
        )
    if not latent:
        raise ValueError("every global site of the model is fixed: there is nothing to calibrate")
    return latent


def _scalar_names(site: str, shape: Sequence[int]) -> list[str]:
    if not shape:
        return [site]
    return [f"{site}[{', '.join(str(i) for i in idx)}]" for idx in np.ndindex(*shape)]


def _canonical(model: Any, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Components sorted by the first coordinate of their location, in every draw.

    A deterministic function of each draw, so it keeps SBC valid (ranks of any function of
    the parameters are uniform) while removing label switching between draws and truth.
    """
    if not isinstance(model, MixtureModel) or model.n_components < 2:
        return values
    sites, site = model.relabel_sites(), model.location_site
    if site not in values:
        return values
    value = values[site]
    rows = component_rows(value, sites[site], value.dim() + sites[site])
    order = torch.argsort(rows[..., 0], dim=-1, stable=True)
    return permute_components(values, order, sites)


def _thin(draws: torch.Tensor, num_ranks: int | None, site: str) -> torch.Tensor:
    """``(chain * draw, ...)`` flattened draws, thinned evenly to ``num_ranks``."""
    flat = draws.reshape(-1, *draws.shape[2:])
    total = flat.shape[0]
    if num_ranks is None:
        return flat
    if total < num_ranks:
        raise ValueError(
            f"the fit returned {total} draws of '{site}', fewer than num_ranks={num_ranks}"
        )
    index = np.round(np.linspace(0, total - 1, num_ranks)).astype(np.int64)
    return flat[torch.as_tensor(index)]


def _replicate(
    model: Any,
    fit: Callable[..., FitResult],
    latent: list[str],
    n_obs: int,
    n_features: int,
    num_ranks: int | None,
    relabel: bool,
    seeds: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, list[str], int, str]:
    """One SBC replicate: ranks and true values of every scalar, their names, L, the method."""
    sim_seed, fit_seed = seeds
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(sim_seed)
        trace = _simulate(model, n_obs, n_features)
    truth = {s: trace.nodes[s]["value"].detach() for s in latent}
    data = trace.nodes[model.observed_site]["value"].detach()
    result = fit(model, data, seed=fit_seed)
    if result.draws is None:
        raise ValueError(
            f"SBC needs posterior draws; the {result.method} fit returned a point estimate"
        )
    absent = [s for s in latent if s not in result.draws]
    if absent:
        raise ValueError(f"the fit returned no draws of {absent}")
    draws = {s: _thin(result.draws[s], num_ranks, s) for s in latent}
    if relabel:
        truth = _canonical(model, truth)
        draws = _canonical(model, draws)
    ranks, values, names = [], [], []
    for s in latent:
        true = truth[s].to(draws[s].dtype)
        below = (draws[s] < true).sum(0)
        ranks.append(below.reshape(-1).numpy())
        values.append(true.reshape(-1).double().numpy())
        names.extend(_scalar_names(s, tuple(true.shape)))
    method = result.method
    if result.info.get("guide"):
        method = f"{method} ({result.info['guide']})"
    kept = int(next(iter(draws.values())).shape[0])
    return np.concatenate(ranks), np.concatenate(values), names, kept, method


def simulation_based_calibration(
    model: Any,
    fit: Callable[..., FitResult],
    *,
    num_replicates: int = 100,
    n_obs: int,
    n_features: int,
    num_ranks: int | None = None,
    num_bins: int | None = None,
    relabel: bool = True,
    seed: int = 0,
    progress: bool | None = None,
) -> SBCResult:
    r"""Simulation-based calibration of ``fit`` on ``model`` (Talts et al., 2018).

    For each replicate: draw :math:`\tilde\theta` from the prior and simulate ``n_obs``
    points by running ``model.model(None, n_obs=..., n_features=...)`` (the model simulates
    when it has no data), fit the simulated data, keep ``num_ranks`` evenly spaced posterior
    draws :math:`\theta_1..\theta_L` and record per scalar
    :math:`r = \#\{l : \theta_l < \tilde\theta\}`. Under exact posterior draws every
    scalar's ranks are uniform on :math:`\{0..L\}`.

    Parameters
    ----------
    model
        A model object with ``model(data=None, *, n_obs, n_features)``, ``observed_site``
        and a ``priors`` mapping that gives every latent global site an explicit
        distribution (see :func:`check_data_independent_priors`).
    fit : callable
        ``fit(model, data, seed=...) -> FitResult`` returning draws, e.g.
        ``functools.partial(fit_mcmc, num_chains=1, init="prior", progress=False)`` or
        ``functools.partial(fit_svi, guide="mean_field", progress=False)``.
    num_replicates : int
        R, prior draws and fits.
    n_obs, n_features : int
        Size of each simulated data set.
    num_ranks : int, optional
        L: draws kept per fit, evenly thinned over (chain, draw) to weaken the
        autocorrelation of MCMC draws, which skews ranks (Talts et al. thin to an effective
        sample size). Default: all.
    num_bins : int, optional
        Bins of the chi-square test (default: ``R // 5`` so that about 5 ranks are expected
        per bin, between 2 and 20, at most ``L + 1``).
    relabel : bool
        With several components, sort the components of the truth and of every draw by the
        first coordinate of their location before ranking (a function of the parameters, so
        SBC stays valid; without it label switching makes ranks meaningless).
    seed : int
        Seeds every replicate's simulation and fit (independent streams per replicate).
    progress : bool or None
        Progress bar over replicates (default: when standard error is a terminal).

    Returns
    -------
    SBCResult

    Raises
    ------
    ValueError
        For priors that depend on the data, a fit without draws, or bad sizes.
    """
    for name, value, low in (
        ("num_replicates", num_replicates, 2),
        ("n_obs", n_obs, 1),
        ("n_features", n_features, 1),
    ):
        check_int(value, name, minimum=low)
    if num_ranks is not None:
        check_int(num_ranks, "num_ranks")
    if num_bins is not None:
        check_int(num_bins, "num_bins", minimum=2)
    if not callable(fit):
        raise ValueError(f"fit must be a callable fit(model, data, seed=...); got {fit!r}")
    latent = check_data_independent_priors(model, n_obs, n_features)
    progress = show_progress(progress)
    children = np.random.SeedSequence(int(seed)).spawn(num_replicates)
    start = time.perf_counter()
    rows, truths, kept = [], [], set()
    names: list[str] = []
    method = ""
    for child in tqdm(children, desc="SBC", disable=not progress, leave=False):
        sim_seed, fit_seed = (int(s) for s in child.generate_state(2) % (2**31 - 1))
        ranks, truth, names, ell, method = _replicate(
            model, fit, latent, n_obs, n_features, num_ranks, relabel, (sim_seed, fit_seed)
        )
        rows.append(ranks)
        truths.append(truth)
        kept.add(ell)
    if len(kept) > 1:
        raise ValueError(
            f"the fits returned different numbers of draws {sorted(kept)}: set num_ranks"
        )
    ell = kept.pop()
    ranks_arr = np.stack(rows).astype(np.int64)
    truth_arr = np.stack(truths)
    varying = np.ptp(truth_arr, axis=0) > 0
    dropped = [n for n, v in zip(names, varying, strict=True) if not v]
    names = [n for n, v in zip(names, varying, strict=True) if v]
    ranks_arr, truth_arr = ranks_arr[:, varying], truth_arr[:, varying]
    if not names:
        raise ValueError("no parameter varies across the prior draws: nothing to calibrate")
    bins = _default_bins(num_replicates, ell) if num_bins is None else int(num_bins)
    if not 2 <= bins <= ell + 1:
        raise ValueError(f"num_bins must be between 2 and L + 1 = {ell + 1}; got {num_bins}")
    null = null_ecdf_gamma(num_replicates, ell, _NUM_NULL, int(seed))
    table = _uniformity_table(ranks_arr, ell, bins, null, names)
    return SBCResult(
        ranks=ranks_arr,
        num_ranks=ell,
        names=names,
        truth=truth_arr,
        table=table,
        num_bins=bins,
        method=method,
        seconds=time.perf_counter() - start,
        seed=int(seed),
        dropped=dropped,
        null_gamma=null,
    )


def _default_bins(num_replicates: int, num_ranks: int) -> int:
    return int(min(20, num_ranks + 1, max(2, num_replicates // 5)))


def _uniformity_table(
    ranks: np.ndarray, num_ranks: int, num_bins: int, null: np.ndarray, names: list[str]
) -> pd.DataFrame:
    """Per-scalar tests and shape statistics of the ranks (see :class:`SBCResult`)."""
    chi2, chi2_p = chi_square_uniformity(ranks, num_ranks, num_bins)
    gamma = ecdf_gamma(ranks.T, num_ranks)
    # Monte-Carlo p-value: the share of null statistics at least as extreme (Davison &
    # Hinkley, 1997, eq. 4.11, counting the observed sample among the simulations).
    ecdf_p = (1 + (null[None, :] <= gamma[:, None]).sum(1)) / (null.size + 1)
    uniform_sd = np.sqrt(((num_ranks + 1) ** 2 - 1) / 12.0)
    return pd.DataFrame(
        {
            "chi2": chi2,
            "chi2_p_value": chi2_p,
            "ecdf_p_value": ecdf_p,
            "mean_rank": ranks.mean(0) / num_ranks,
            "dispersion": ranks.std(0) / uniform_sd,
        },
        index=pd.Index(names, name="parameter"),
    )
