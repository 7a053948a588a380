r"""ArviZ for amortized inference: how well a VAE's encoder approximates each posterior.

For a model of the VAE family (:class:`~ppl_models.models.AmortizedModel`) and observations
:math:`x_1, \dots, x_N`, draw :math:`K` codes :math:`z_{nk} \sim q_\phi(z \mid x_n)` per
observation and weigh them,

.. math::

    w_{nk} = \log p_\theta(x_n, z_{nk}) - \log q_\phi(z_{nk} \mid x_n)

(the model's ``log_importance_weights``: for a GMVAE the label is summed out of both
:math:`p` and :math:`q`). Per observation this gives

* **PSIS k-hat** (Vehtari et al. 2024): the shape of a generalised Pareto fit to the largest
  weights, by :func:`arviz.psislw`. It says whether importance sampling from the encoder can
  estimate integrals under the true posterior :math:`p(z \mid x_n)` at all (Yao et al. 2018):
  below 0.5 the estimate converges fast; 0.5-0.7 slowly; above 0.7 the weights' variance is so
  heavy-tailed that :math:`\log p(x_n)` and posterior expectations are not to be trusted with
  any practical K. A narrow or misplaced encoder (the usual failure of an amortized guide: it
  under-covers the posterior) gives large k-hat. When every weight of an observation is equal
  up to rounding (the encoder is the exact posterior, e.g. a linear-Gaussian VAE with its
  closed-form encoder), there is no tail to fit and k-hat is reported as :math:`-\infty`.
* the PSIS **effective sample size** :math:`1 / \sum_k \tilde w_{nk}^2` of the smoothed,
  normalised weights (between 1 and K);
* the **importance-weighted bound** :math:`\mathcal L_K(x_n) = \log \frac1K \sum_k e^{w_{nk}}`
  (Burda et al. 2016), which rises to :math:`\log p(x_n)` with K, and the **ELBO**
  estimate :math:`\frac1K \sum_k w_{nk}` from the same draws;
* the **gap** :math:`\mathcal L_K(x_n) - \mathrm{ELBO}(x_n) \ge 0` (non-negative by Jensen's
  inequality, draw by draw). As K grows it tends to :math:`\log p(x_n) - \mathrm{ELBO}(x_n)
  = \mathrm{KL}(q_\phi(z \mid x_n) \,\|\, p(z \mid x_n))`, what Cremer et al. (2018) call the
  *inference gap*: the amortization gap (the encoder's network against the best Gaussian for
  this one observation) plus the approximation gap (the best Gaussian against the posterior).
  Separating the two needs a per-observation optimisation of :math:`q`, which is not done
  here. With finite K it is an underestimate (by :math:`\log p(x_n) - \mathcal L_K(x_n)`).

**Model comparison.** A VAE's decoder and prior are point estimates: there are no posterior
draws of :math:`\theta`, and the per-observation code :math:`z_n` is integrated out rather than
drawn (*integrated* LOO; leaving :math:`x_n` out makes the posterior of :math:`z_n` its prior,
so the predictive density of the left-out point is :math:`p(x_n \mid \theta)` itself). The
honest pointwise predictive density is therefore :math:`\log p(x_n \mid \hat\theta)`, estimated
by :math:`\mathcal L_K(x_n)`, on data the model was **not** trained on (then no leaving-out is
needed; on training data it is the in-sample fit, optimistic by an unknown amount). The
``log_likelihood`` group holds it as one chain of one draw, the package's convention for a point
estimate, and :func:`amortized_loo` turns it into ArviZ's ``ELPDData`` with

* ``elpd_loo`` :math:`= \sum_n \mathcal L_K(x_n)` (a lower bound, tight when the k-hats are
  small), ``se`` from the pointwise values, ``p_loo = 0`` (no correction: a plug-in estimate
  on held-out data);
* ``pareto_k`` the encoder's k-hat above, which is what decides whether each pointwise value is
  reliable, and ``warning`` when one exceeds ArviZ's threshold for K draws;

so that ``az.compare({"standard": amortized_loo(a), "vamp": amortized_loo(b)})`` ranks VAEs
by held-out log-likelihood with the paired standard error of the difference (``dse``, from
pointwise differences on the same images) and stacking weights of the two densities.

Two constructions were rejected. Storing the K log weights as the draws of the
``log_likelihood`` group makes :func:`arviz.loo` compute, per observation, the log of the
PSIS-smoothed *harmonic* mean of the weights, i.e. Li & Turner's (2016) Rényi bound of order 2,
:math:`\log p(x_n) - D_2(q \,\|\, p(z \mid x_n))`, and its ``p_loo`` becomes that divergence:
a ranking by it mixes the encoder's fit into the model's, and it would take K x N numbers.
Storing R replicate estimates of :math:`\log p(x_n)` makes ``p_loo`` measure Monte Carlo
disagreement between replicates and gives ``pareto_k = inf`` (with a warning) exactly when the
encoder is perfect and the replicates agree. :func:`arviz.loo` itself needs at least two draws
and fails on the one-draw group; :func:`amortized_loo` is its counterpart here.

References
----------
Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance weighted autoencoders. ICLR.
Cremer, C., Li, X. & Duvenaud, D. (2018). Inference suboptimality in variational autoencoders.
ICML.
Li, Y. & Turner, R. E. (2016). Rényi divergence variational inference. NeurIPS.
Vehtari, A., Simpson, D., Gelman, A., Yao, Y. & Gabry, J. (2024). Pareto smoothed importance
sampling. JMLR 25(72).
Yao, Y., Vehtari, A., Simpson, D. & Gelman, A. (2018). Yes, but did it work?: Evaluating
variational inference. ICML.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

from ppl_models._arviz import az
from ppl_models._shared.checks import check_int
from ppl_models._shared.progress import show_progress
from ppl_models.diagnostics.criteria import pareto_k_threshold
from ppl_models.infer.result import FitResult
from ppl_models.models import AmortizedModel

__all__ = [
    "AMORTIZED_GROUP",
    "KHAT_BAD",
    "KHAT_GOOD",
    "MIN_PARTICLES",
    "amortization_summary",
    "amortized_diagnostics",
    "amortized_loo",
    "compare_amortized",
    "psis_per_row",
]

#: The InferenceData group holding the per-observation encoder diagnostics.
AMORTIZED_GROUP = "amortized"
#: k-hat below this: importance sampling from the encoder converges fast.
KHAT_GOOD = 0.5
#: k-hat above this: the weights are too heavy-tailed to trust (for K of a few hundred or more).
KHAT_BAD = 0.7
#: Fewest importance samples with a k-hat: PSIS fits a generalised Pareto to the largest
#: ceil(0.2 K) weights and ArviZ reports k-hat = inf when they are fewer than 5.
MIN_PARTICLES = 21
#: Weights of one observation whose spread is below this many units of rounding (of the
#: model's dtype, relative to their size) are taken as equal (the encoder is exact).
_EQUAL_WEIGHTS_ULPS = 64
#: Variables of the group, in order.
_VARIABLES = ("khat", "ess", "iwae", "elbo", "gap")


def psis_per_row(log_weights: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """PSIS k-hat and effective sample size of each row of ``(B, K)`` log weights.

    Rows whose weights are all equal up to ``eps`` relative rounding get k-hat ``-inf`` and
    ESS ``K`` (no tail to fit; :func:`arviz.psislw` would give ``inf``). ``-inf`` weights (zero
    weight) are allowed; a row that is ``-inf`` throughout or holds NaN or ``+inf`` is refused.
    """
    rows, k = log_weights.shape
    if np.isnan(log_weights).any() or np.isposinf(log_weights).any():
        raise ValueError("the model's log importance weights hold NaN or +inf")
    top = log_weights.max(axis=1)
    if np.isneginf(top).any():
        raise ValueError(
            "every importance weight of an observation is zero (log p(x, z) = -inf at all of "
            "the encoder's draws): the encoder and the model disagree about the support"
        )
    finite = np.where(np.isfinite(log_weights), log_weights, top[:, None])
    spread = top - finite.min(axis=1)
    equal = spread <= _EQUAL_WEIGHTS_ULPS * eps * np.maximum(1.0, np.abs(top))
    equal &= np.isfinite(log_weights).all(axis=1)
    khat = np.full(rows, -np.inf)
    ess = np.full(rows, float(k))
    if (~equal).any():
        smoothed, shape = az.psislw(log_weights[~equal], reff=1.0)
        khat[~equal] = np.asarray(shape, dtype=float)
        ess[~equal] = 1.0 / np.exp(2.0 * np.asarray(smoothed, dtype=float)).sum(axis=1)
    return khat, ess


def _model_and_data(result: Any, data: Any) -> tuple[Any, torch.Tensor]:
    model = result.model if isinstance(result, FitResult) else result
    if not isinstance(model, AmortizedModel):
        raise ValueError(
            f"{type(model).__name__} has no encoder (the AmortizedModel role): amortized "
            "diagnostics are for the VAE family (VAE, mixture and VampPrior priors, GMVAE)"
        )
    if data is None:
        if not isinstance(result, FitResult):
            raise ValueError("data is required when a model (not a FitResult) is given")
        data = result.data
    return model, model.validate(data)


def amortized_diagnostics(
    result: Any,
    data: Any = None,
    *,
    num_particles: int = 1000,
    batch_size: int = 100,
    particle_batch: int = 500,
    seed: int | None = 0,
    progress: bool | None = None,
) -> az.InferenceData:
    r"""Per-observation PSIS k-hat of the encoder, bounds and gap, as ArviZ data.

    See the module's description for the quantities and their meaning.

    Parameters
    ----------
    result : FitResult or model
        A fit of an :class:`~ppl_models.models.AmortizedModel` (the VAE family), or the model.
    data : array-like (N, D), optional
        Observations, in the form the likelihood takes; default the fit's own data. Score
        held-out data when comparing models (see :func:`amortized_loo`).
    num_particles : int
        K, importance samples per observation: at least :data:`MIN_PARTICLES` (21, the
        fewest for which PSIS has a tail of 5 weights to fit); a few hundred or more for a
        k-hat worth reading (Vehtari et al. 2024 need :math:`K > 10^{1/(1 - k)}` for a
        reliable estimate at shape k); 1000 by default.
    batch_size, particle_batch : int
        Observations and particles per model call: memory is proportional to their product
        (decoder outputs), plus ``batch_size * num_particles`` log weights.
    seed : int or None
        Seeds the draws (the global RNG is restored afterwards); None uses it as it is. With
        the same ``seed``, ``batch_size`` and ``particle_batch`` the ``iwae`` values equal
        :func:`ppl_models.infer.log_marginal_likelihood` ``(..., pointwise=True)``.
    progress : bool or None
        Progress bar over batches of observations (default: when standard error is a
        terminal).

    Returns
    -------
    arviz.InferenceData
        - ``log_likelihood``: the observed site (``x``) with dims ``(chain, draw, obs)``, one
          chain of one draw: :math:`\mathcal L_K(x_n)`, the estimate of
          :math:`\log p(x_n \mid \hat\theta)` with the code integrated out (and a GMVAE's
          label summed out); ``attrs["point_estimate"] = 1``.
        - ``amortized`` (dim ``obs``): ``khat``, ``ess``, ``iwae`` (the same bound), ``elbo``
          and ``gap`` (``iwae - elbo``), in nats; ``attrs``: ``num_particles``, ``model``,
          ``seed``, ``khat_good`` / ``khat_bad`` (0.5 / 0.7), ``good_k`` (ArviZ's threshold
          for K draws), ``n_khat_bad`` and the mean and 5/50/95 % quantiles of ``gap``.

        Write it with ``idata.to_netcdf(path)``; :func:`amortized_loo` and
        :func:`amortization_summary` read it, :func:`plot_khat` draws it.

    Raises
    ------
    ValueError
        ``num_particles`` below :data:`MIN_PARTICLES`, a model without an encoder, data of
        the wrong shape or outside the likelihood's support, or importance weights that are
        NaN.
    """
    if isinstance(num_particles, bool) or not isinstance(num_particles, int | np.integer) or (
        num_particles < MIN_PARTICLES
    ):
        raise ValueError(
            f"num_particles must be an integer of at least {MIN_PARTICLES} (PSIS fits the "
            f"largest 20% of the weights and needs 5 of them; a few hundred or more for a "
            f"k-hat worth reading); got {num_particles!r}"
        )
    k = int(num_particles)
    batch_size = check_int(batch_size, "batch_size")
    particle_batch = check_int(particle_batch, "particle_batch")
    model, data = _model_and_data(result, data)
    if data.shape[0] == 0:
        raise ValueError("data has no observations")
    eps = float(torch.finfo(data.dtype).eps)
    show = show_progress(progress)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in _VARIABLES}
    starts = range(0, data.shape[0], batch_size)
    with torch.no_grad(), torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for start in tqdm(starts, disable=not show, desc="k-hat", leave=False):
            x = data[start : start + batch_size]
            parts = [
                model.log_importance_weights(x, min(particle_batch, k - done))
                for done in range(0, k, particle_batch)
            ]
            weights = torch.cat(parts).T.double().cpu().numpy()  # (B, K)
            khat, ess = psis_per_row(weights, eps)
            elbo = weights.mean(axis=1)
            # log mean exp(w - mean w) >= 0 (Jensen); only rounding can push it below
            gap = np.maximum(_logmeanexp(weights - elbo[:, None]), 0.0)
            for name, value in zip(_VARIABLES, (khat, ess, elbo + gap, elbo, gap),
                                   strict=True):
                columns[name].append(value)
    values = {name: np.concatenate(parts) for name, parts in columns.items()}
    return _inference_data(model, values, k, seed)


def _logmeanexp(weights: np.ndarray) -> np.ndarray:
    top = weights.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(weights - top).mean(axis=1))


def _inference_data(
    model: Any, values: dict[str, np.ndarray], k: int, seed: int | None
) -> az.InferenceData:
    n = len(values["iwae"])
    coords = {"obs": np.arange(n)}
    site = model.observed_site
    idata = az.from_dict(
        log_likelihood={site: values["iwae"][None, None, :]},
        coords=coords,
        dims={site: ["obs"]},
    )
    idata.log_likelihood.attrs.update({
        "point_estimate": 1,
        "estimator": "importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k | x)",
        "num_particles": k,
        "meaning": "log p(x_n | theta) with the code integrated out (labels summed out); "
                   "one draw: decoder and prior are point estimates",
    })
    gap = values["gap"]
    khat = values["khat"]
    attrs: dict[str, Any] = {
        "num_particles": k,
        "model": model.name,
        "khat_good": KHAT_GOOD,
        "khat_bad": KHAT_BAD,
        "good_k": pareto_k_threshold(k),
        "n_khat_bad": int((khat > KHAT_BAD).sum()),
        "gap_mean": float(gap.mean()),
        "gap_q05": float(np.quantile(gap, 0.05)),
        "gap_q50": float(np.quantile(gap, 0.5)),
        "gap_q95": float(np.quantile(gap, 0.95)),
        "gap_meaning": "iwae - elbo: estimates KL(q(z|x) || p(z|x)), the inference gap "
                       "(amortization + approximation gaps, Cremer et al. 2018), from below",
    }
    if seed is not None:
        attrs["seed"] = int(seed)
    group = xr.Dataset(
        {name: ("obs", values[name]) for name in _VARIABLES}, coords=coords, attrs=attrs
    )
    idata.add_groups({AMORTIZED_GROUP: group})
    return idata


def _group(idata: Any) -> xr.Dataset:
    if not isinstance(idata, az.InferenceData) or AMORTIZED_GROUP not in idata.groups():
        raise ValueError(
            f"expected the InferenceData of amortized_diagnostics (with an "
            f"'{AMORTIZED_GROUP}' group); got {type(idata).__name__}"
        )
    return idata[AMORTIZED_GROUP]


_SCALES = {"log": 1.0, "negative_log": -1.0, "deviance": -2.0}


def amortized_loo(idata: az.InferenceData, *, scale: str = "log") -> az.ELPDData:
    r"""ArviZ's LOO record of a VAE's held-out log-likelihood, for :func:`arviz.compare`.

    ``elpd_loo`` :math:`= \sum_n \mathcal L_K(x_n)` (the ``log_likelihood`` group), ``se``
    :math:`= \sqrt{N \operatorname{Var}_n \mathcal L_K(x_n)}`, ``p_loo = 0``, ``loo_i`` the
    pointwise values, ``pareto_k`` the encoder's k-hat per observation and ``warning`` when
    one exceeds :func:`~ppl_models.diagnostics.criteria.pareto_k_threshold` of K: what
    :func:`arviz.loo` gives for a Bayesian model,
    with the importance sampling of the code (rather than of a left-out posterior) as its
    Pareto diagnostic. See the module's description for why this, and not :func:`arviz.loo`
    on draws, is the honest elpd of a VAE (in brief: decoder and prior are point estimates,
    the code is integrated out, and the data should be held out).

    Parameters
    ----------
    idata : arviz.InferenceData
        From :func:`amortized_diagnostics`.
    scale : {"log", "negative_log", "deviance"}
        As :func:`arviz.loo` (log: larger is better).

    Returns
    -------
    arviz.ELPDData
        ``az.compare({"a": amortized_loo(a), "b": amortized_loo(b)})`` ranks the models.
    """
    group = _group(idata)
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {sorted(_SCALES)}; got {scale!r}")
    if "log_likelihood" not in idata.groups() or len(idata.log_likelihood.data_vars) != 1:
        raise ValueError("idata needs the one-variable log_likelihood group of "
                         "amortized_diagnostics")
    factor = _SCALES[scale]
    (values,) = idata.log_likelihood.data_vars.values()
    pointwise = factor * values.isel(chain=0, draw=0, drop=True)
    n = pointwise.size
    k = int(group.attrs["num_particles"])
    threshold = pareto_k_threshold(k)
    khat = group["khat"]
    return az.ELPDData(
        data=[
            float(pointwise.sum()),
            float(math.sqrt(n * float(np.var(pointwise.values)))),
            0.0,
            k,
            n,
            bool((khat > threshold).any()),
            pointwise.rename("loo_i"),
            khat.rename("pareto_k"),
            scale,
            threshold,
        ],
        index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i",
               "pareto_k", "scale", "good_k"],
    )


def amortization_summary(idata: az.InferenceData) -> pd.DataFrame:
    """Mean, sd and quantiles over observations of ``khat``, ``ess``, ``iwae``, ``elbo`` and
    ``gap`` (rows), plus the share of observations in each k-hat band (``khat`` row).

    Returns
    -------
    pandas.DataFrame
        Columns ``mean``, ``sd``, ``min``, ``q05``, ``q25``, ``median``, ``q75``, ``q95``,
        ``max``, ``share_good`` (k-hat at most 0.5), ``share_ok`` (0.5-0.7) and
        ``share_bad`` (above 0.7); the shares are NaN outside the ``khat`` row. An exact
        encoder's k-hat of ``-inf`` counts as good; statistics of ``khat`` are over its
        finite values (NaN when there are none).
    """
    group = _group(idata)
    rows: dict[str, dict[str, float]] = {}
    for name in _VARIABLES:
        values = np.asarray(group[name].values, dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            stats = dict.fromkeys(("mean", "sd", "min", "q05", "q25", "median", "q75", "q95",
                                   "max"), math.nan)
        else:
            q = np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95])
            stats = {"mean": float(finite.mean()), "sd": float(finite.std()),
                     "min": float(finite.min()), "q05": q[0], "q25": q[1], "median": q[2],
                     "q75": q[3], "q95": q[4], "max": float(finite.max())}
        if name == "khat":
            stats.update({
                "share_good": float((values <= KHAT_GOOD).mean()),
                "share_ok": float(((values > KHAT_GOOD) & (values <= KHAT_BAD)).mean()),
                "share_bad": float((values > KHAT_BAD).mean()),
            })
        rows[name] = stats
    return pd.DataFrame.from_dict(rows, orient="index")


def compare_amortized(
    fits: Mapping[str, az.InferenceData], *, method: str = "stacking"
) -> pd.DataFrame:
    """:func:`arviz.compare` of VAEs scored on the same observations, by :func:`amortized_loo`.

    The same as ``az.compare({name: amortized_loo(idata) ...}, method=method)`` (ranked by
    held-out log-likelihood; ``elpd_diff`` and ``dse`` from the pointwise differences;
    ``warning`` when an encoder's k-hat makes some pointwise value unreliable), with the
    pandas deprecation warning that ArviZ 0.23's ``compare`` raises under pandas 3 silenced.

    Raises
    ------
    ValueError
        Fewer than two fits, or fits of different numbers of observations.
    """
    if len(fits) < 2:
        raise ValueError(f"compare_amortized needs at least two fits; got {len(fits)}")
    records = {str(name): amortized_loo(idata) for name, idata in fits.items()}
    sizes = {name: int(record["n_data_points"]) for name, record in records.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"the fits were scored on different numbers of observations {sizes}: compare "
            "models on the same held-out data"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The inplace keyword")
        return az.compare(records, method=method)
