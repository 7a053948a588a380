r"""A fitted guide as an importance proposal: ELBO, IWAE bound on log p(x), PSIS k-hat.

For draws :math:`\theta_s \sim q(\theta)`, :math:`s = 1..S`, the log importance weights
:math:`\log w_s = \log p(x, \theta_s) - \log q(\theta_s)` (labels summed out of
:math:`p(x, \theta)`) give at once

* the ELBO estimate :math:`\frac1S \sum_s \log w_s`,
* the importance-weighted bound :math:`\log \frac1S \sum_s w_s` (Burda, Grosse &
  Salakhutdinov, 2016, "Importance weighted autoencoders", ICLR), which never lies below the
  ELBO estimate of the same draws (Jensen), and rises to :math:`\log p(x)` as :math:`S` grows,
* the Pareto shape :math:`\hat k` of the weights' upper tail (Yao, Vehtari, Simpson &
  Gelman, 2018, "Yes, but did it work?: Evaluating variational inference", ICML): below 0.5
  the guide is a good proposal and the IWAE estimate is reliable; above 0.7 it is not.

The weights come from :func:`pyro.infer.importance.vectorized_importance_weights` on a
collapsed joint that is vectorised over particles (:func:`vectorized_marginal_joint`);
other models (not a :class:`~ppl_models.models.FiniteMixture`) fall back to one trace per
particle. :math:`\hat k`
is ArviZ's PSIS fit (:func:`arviz.psislw`) of these same weights, so it diagnoses exactly the
IWAE estimate reported beside it. (``pyro.infer.importance.psis_diagnostic`` cannot take the
models' ``marginal_model`` directly: its ``pyro.factor`` sums over every dimension, particles
included, and with one particle at a time Pyro 1.9 fails to concatenate 0-d weights.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.importance import vectorized_importance_weights

import guides
from ppl_models._arviz import az
from ppl_models._shared.checks import check_int
from ppl_models.models import CollapsedLikelihood, FiniteMixture, LatentModel

__all__ = [
    "ImportanceEstimates",
    "heldout_lpd",
    "importance_estimates",
    "importance_log_weights",
    "vectorized_marginal_joint",
]

@dataclass(frozen=True)
class ImportanceEstimates:
    r"""What a guide's importance weights say about the posterior it approximates.

    Attributes
    ----------
    elbo : float
        :math:`\frac1S\sum_s \log w_s`, nats (total over the data, not per observation).
    iwae : float
        :math:`\log\frac1S\sum_s w_s`, an estimate of (a lower bound on) :math:`\log p(x)`.
    k_hat : float
        Pareto shape of the weights' tail (PSIS).
    num_particles : int
        :math:`S`.
    ess : float
        Effective sample size of the self-normalised weights,
        :math:`(\sum_s w_s)^2 / \sum_s w_s^2`.
    """

    elbo: float
    iwae: float
    k_hat: float
    num_particles: int
    ess: float


def vectorized_marginal_joint(model: Any) -> Callable[[torch.Tensor], None] | None:
    r"""The collapsed joint :math:`p(x, \theta)` of a finite mixture, vectorised over particles.

    Samples the globals as the model does and adds
    :math:`\sum_n \log \sum_k w_k f(x_n \mid \theta_k)` as one factor *per particle*, so
    that it runs under the particle plate of
    :func:`~pyro.infer.importance.vectorized_importance_weights`. It has the density of the
    model's ``marginal_model`` (which sums its factor over every dimension and so cannot be
    vectorised).

    Parameters
    ----------
    model
        A :class:`~ppl_models.models.FiniteMixture` (its ``sample_globals`` and
        ``log_likelihood`` are vectorised over particles).

    Returns
    -------
    callable or None
        ``joint(data)``, or ``None`` for any other model.
    """
    if not isinstance(model, FiniteMixture):
        return None
    nesting = model.max_plate_nesting

    def joint(data: torch.Tensor) -> None:
        d = data.shape[-1]
        params = model.sample_globals(data, d)
        shapes = {"weights": (model.n_components,), **model.site_shapes(d)}
        batches = {k: v.shape[: v.dim() - len(shapes[k])] for k, v in params.items()}
        particles = max(math.prod(b) for b in batches.values())
        vectorized = any(len(b) for b in batches.values())
        flat = {
            k: v.reshape(particles, *shapes[k])
            if math.prod(batches[k]) == particles
            else v.expand(particles, *shapes[k])
            for k, v in params.items()
        }
        log_lik = model.log_likelihood(data, flat).sum(-1)  # (particles,)
        value = log_lik.reshape(particles, *([1] * nesting)) if vectorized else log_lik.sum()
        pyro.factor("log_likelihood", value)

    return joint


def importance_log_weights(
    model: Any, guide: Callable, data: torch.Tensor, num_particles: int = 1000
) -> torch.Tensor:
    r""":math:`\log p(x, \theta_s) - \log q(\theta_s)` for ``num_particles`` guide draws.

    Parameters
    ----------
    model
        A model object (labels summed out through :func:`vectorized_marginal_joint`, else its
        ``marginal_model``) or a Pyro model without discrete latents.
    guide : callable
        A fitted guide over the model's global latents (an autoguide or the user's own; to be
        vectorised it must run under an outer ``pyro.plate``, as Pyro's autoguides do).
    data : Tensor (N, D)
    num_particles : int

    Returns
    -------
    Tensor (num_particles,)

    Raises
    ------
    ValueError
        For fewer than 2 particles, or a model with enumerated sites and no way to sum them
        out (neither the finite-mixture hooks nor ``marginal_model``).
    """
    num_particles = check_int(num_particles, "num_particles", minimum=2)
    joint = vectorized_marginal_joint(model)
    with torch.no_grad():
        if joint is not None:
            log_w, _, _ = vectorized_importance_weights(
                joint,
                guide,
                data,
                num_samples=num_particles,
                max_plate_nesting=(
                    model.max_plate_nesting if isinstance(model, LatentModel) else 1
                ),
            )
            return log_w.detach().reshape(num_particles)
        if isinstance(model, CollapsedLikelihood):
            model_fn = model.marginal_model
        else:
            if guides.enumerated_sites(model):
                raise ValueError(
                    f"{model!r} has enumerated sites {list(guides.enumerated_sites(model))} "
                    "but no marginal_model: log p(x, theta) needs the labels summed out"
                )
            model_fn = guides.model_callable(model)
        weights = []
        for _ in range(num_particles):
            guide_trace = poutine.trace(guide).get_trace(data)
            model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(
                data
            )
            weights.append(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
        return torch.stack(weights).detach()


def importance_estimates(
    model: Any, guide: Callable, data: torch.Tensor, num_particles: int = 1000
) -> ImportanceEstimates:
    r"""ELBO, IWAE estimate of :math:`\log p(x)` and PSIS :math:`\hat k` of a guide.

    Parameters
    ----------
    model, guide, data, num_particles
        As :func:`importance_log_weights`.

    Returns
    -------
    ImportanceEstimates
        Non-finite weights (a draw where the model has no density) make ``iwae`` and ``elbo``
        ``-inf`` and ``k_hat`` ``inf``.
    """
    log_w = importance_log_weights(model, guide, data, num_particles).double()
    if not bool(torch.isfinite(log_w).all()):
        return ImportanceEstimates(-math.inf, -math.inf, math.inf, num_particles, 0.0)
    iwae = float(torch.logsumexp(log_w, 0) - math.log(num_particles))
    normalized = log_w - torch.logsumexp(log_w, 0)
    ess = float(1.0 / normalized.exp().square().sum())
    _, k_hat = az.psislw(log_w.numpy().copy())
    return ImportanceEstimates(
        elbo=float(log_w.mean()),
        iwae=iwae,
        k_hat=float(k_hat),
        num_particles=num_particles,
        ess=ess,
    )


def heldout_lpd(model: Any, draws: dict[str, torch.Tensor], data: torch.Tensor) -> float:
    r"""Log pointwise predictive density of held-out data, summed over its points.

    :math:`\mathrm{lpd} = \sum_n \log \frac1S \sum_s p(\tilde x_n \mid \theta_s)`
    (Gelman, Hwang & Vehtari, 2014, "Understanding predictive information criteria for
    Bayesian models", Stat. Comput.), labels summed out by ``model.log_likelihood``; a point
    estimate is one draw (:math:`S = 1`).

    Parameters
    ----------
    model
        A model with ``log_likelihood(data, params)`` vectorised over leading draw dims.
    draws : dict of str to Tensor
        Global site values, each ``(*batch, *site_shape)`` with the same ``batch`` (empty for
        a point estimate).
    data : Tensor (M, D)
        The held-out rows.

    Returns
    -------
    float
        ``nan`` when ``data`` has no rows.
    """
    if data.shape[0] == 0:
        return math.nan
    with torch.no_grad():
        cast = {k: v.to(data.dtype) for k, v in draws.items()}
        log_lik = model.log_likelihood(data, cast)  # (*batch, M)
        log_lik = log_lik.reshape(-1, data.shape[0]).double()
        lpd = torch.logsumexp(log_lik, 0) - math.log(log_lik.shape[0])
    return float(lpd.sum())
