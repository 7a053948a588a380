"""Information criteria of a mixture fit, for every method.

BIC and AIC at the fit's point (EM's optimum, SVI's guide centre, the NUTS posterior centre,
``result.params``):

.. math:: \\mathrm{BIC} = -2 \\log p(x \\mid \\hat\\theta) + k \\log N, \\qquad
          \\mathrm{AIC} = -2 \\log p(x \\mid \\hat\\theta) + 2k,

with :math:`k` the unconstrained dimension of the fitted global sites (Schwarz, 1978;
Akaike, 1974). WAIC and PSIS-LOO (Watanabe, 2010; Vehtari, Gelman & Gabry, 2017) from the
pointwise log-likelihood of the draws, on the deviance scale like BIC/AIC; a point estimate
has no draws, so they are absent there.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch.distributions import biject_to

import guides
from ppl_models._arviz import az
from ppl_models.infer.result import FitResult

__all__ = ["information_criteria", "n_free_parameters", "pareto_k_threshold"]


def n_free_parameters(result: FitResult) -> int:
    """The unconstrained dimension of every fitted global site of ``result``."""
    supports = guides.global_latent_supports(result.model, result.data)
    total = 0
    for name, value in result.params.items():
        support = supports.get(name)
        if support is None:
            total += value.numel()
        else:
            total += math.prod(biject_to(support).inverse_shape(value.shape))
    return total


def information_criteria(result: FitResult, idata: az.InferenceData | None = None
                         ) -> dict[str, Any]:
    """``bic``, ``aic``, ``n_parameters`` at ``result.params`` and, when ``idata`` holds draws
    and a ``log_likelihood`` group, ``waic``, ``loo`` (deviance scale, smaller is better),
    ``p_waic``, ``p_loo`` and ``loo_pareto_k_max``.

    Parameters
    ----------
    result : FitResult
        A fit of a :class:`~ppl_models.models.CollapsedLikelihood` mixture.
    idata : arviz.InferenceData, optional
        Its ArviZ data (:func:`~ppl_models.diagnostics.to_inference_data`).
    """
    model = result.model
    data = result.data
    with torch.no_grad():
        params = model.full_params(result.params, result.n_features)
        params = {k: torch.as_tensor(v).to(data.dtype) for k, v in params.items()}
        total = float(model.log_likelihood(data, params).sum())
    k = n_free_parameters(result)
    n = int(data.shape[0])
    out: dict[str, Any] = {
        "n_parameters": k,
        "bic": -2.0 * total + k * math.log(n),
        "aic": -2.0 * total + 2.0 * k,
    }
    point = idata is None or bool(int(idata.posterior.attrs.get("point_estimate", 0)))
    if point or "log_likelihood" not in idata.groups():
        return out
    with warnings.catch_warnings():
        # ArviZ warns on few draws or high Pareto k; the k is reported instead.
        warnings.simplefilter("ignore")
        waic = az.waic(idata, scale="deviance")
        loo = az.loo(idata, scale="deviance", pointwise=True)
    out.update({
        "waic": float(waic.elpd_waic),
        "p_waic": float(waic.p_waic),
        "loo": float(loo.elpd_loo),
        "p_loo": float(loo.p_loo),
        "loo_pareto_k_max": float(loo.pareto_k.max()),
    })
    return out


def pareto_k_threshold(num_draws: int) -> float:
    """Largest reliable Pareto :math:`\\hat k` for ``num_draws`` draws (or importance samples):
    :math:`\\min(1 - 1 / \\log_{10} S, 0.7)` (Vehtari, Simpson, Gelman, Yao & Gabry, 2024,
    "Pareto smoothed importance sampling", JMLR 25(72), §3.2.4; ArviZ's threshold)."""
    return min(1.0 - 1.0 / math.log10(num_draws), 0.7)
