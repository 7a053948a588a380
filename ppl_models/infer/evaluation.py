r"""Held-out evaluation of amortized models: the importance-weighted bound on log p(x).

For a model with an amortized posterior :math:`q(z \mid x)` (the VAE family),

.. math::

    \mathcal L_K(x) = \mathbb E_{z_{1:K} \sim q(\cdot \mid x)}
        \Big[\log \frac1K \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)}\Big]
    \;\le\; \mathcal L_{K+1}(x) \;\le\; \log p(x),

with :math:`\mathcal L_1` the ELBO and :math:`\mathcal L_K \to \log p(x)` as
:math:`K \to \infty` when the weights are bounded (Burda, Grosse & Salakhutdinov 2016). One
draw of the inner estimator is computed per data point (the usual report, e.g. with
K = 5000 on the 10,000 MNIST test images). The model supplies the log weights through
``log_importance_weights(x, S) -> (S, B)`` (labels of a GMVAE summed out of both :math:`p`
and :math:`q`); here they are accumulated over batches of data and of particles with
``logsumexp``, so memory stays at ``batch_size * particle_batch`` decoder evaluations.

References
----------
Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance weighted autoencoders. ICLR.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm.auto import tqdm

from ppl_models._shared.checks import check_int
from ppl_models._shared.progress import show_progress
from ppl_models.data import check_data
from ppl_models.infer.result import FitResult
from ppl_models.models import AmortizedModel, ImportanceWeighted, LatentModel

__all__ = ["elbo_terms", "log_marginal_likelihood"]


def _model_and_data(result: Any, data: Any, role: type, hook: str) -> tuple[Any, torch.Tensor]:
    model = result.model if isinstance(result, FitResult) else result
    if not isinstance(model, role):
        raise ValueError(
            f"{type(model).__name__} has no {hook} (the {role.__name__} role): this "
            "evaluation is for models with an amortized posterior (the VAE family)"
        )
    data = model.validate(data) if isinstance(model, LatentModel) else check_data(data)
    return model, data


def log_marginal_likelihood(
    result: Any,
    data: torch.Tensor,
    num_particles: int = 5000,
    *,
    batch_size: int = 100,
    particle_batch: int = 500,
    seed: int | None = 0,
    progress: bool | None = None,
    pointwise: bool = False,
) -> float | torch.Tensor:
    r"""Mean over data points of the importance-weighted bound :math:`\mathcal L_K(x)`.

    :math:`\frac1N \sum_n \log \frac1K \sum_k \exp w_{nk}`, :math:`w_{nk} = \log p(x_n,
    z_{nk}) - \log q(z_{nk} \mid x_n)`, :math:`z_{nk} \sim q(\cdot \mid x_n)` (Burda et al.
    2016). ``num_particles=1`` is a one-sample ELBO estimate; the bound rises towards
    :math:`\log p(x)` as ``num_particles`` grows.

    Parameters
    ----------
    result : FitResult or model
        A fit of an :class:`~ppl_models.models.ImportanceWeighted` model (the VAE family), or
        the model itself.
    data : Tensor (N, D)
        Held-out data, in the form the likelihood takes (binary for ``bernoulli``).
    num_particles : int
        K, importance samples per data point.
    batch_size, particle_batch : int
        Data points and particles per model call: memory is proportional to their product
        (the defaults hold 50,000 decoder outputs, ~160 MB for 784 pixels in float32).
    seed : int or None
        Seeds the particles (the global RNG is restored afterwards); None uses it as it is.
    progress : bool or None
        Progress bar over data batches (default: when standard error is a terminal).
    pointwise : bool
        Return the bound of every data point ``(N,)`` instead of their mean (for a standard
        error, or per-point comparisons of two models on the same data).

    Returns
    -------
    float or Tensor (N,)
        The bound per data point, in nats: their mean, or each of them.
    """
    k = check_int(num_particles, "num_particles")
    batch_size = check_int(batch_size, "batch_size")
    particle_batch = check_int(particle_batch, "particle_batch")
    model, data = _model_and_data(result, data, ImportanceWeighted, "log_importance_weights")
    progress = show_progress(progress)
    bounds = []
    starts = range(0, data.shape[0], batch_size)
    with torch.no_grad(), torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for start in tqdm(starts, disable=not progress, desc="log p(x)", leave=False):
            x = data[start : start + batch_size]
            acc = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
            for done in range(0, k, particle_batch):
                weights = model.log_importance_weights(x, min(particle_batch, k - done))
                acc = torch.logaddexp(acc, torch.logsumexp(weights, 0))
            bounds.append(acc - math.log(k))
    values = torch.cat(bounds)
    return values if pointwise else float(values.double().mean())


def elbo_terms(
    result: Any,
    data: torch.Tensor,
    *,
    batch_size: int = 1000,
    seed: int | None = 0,
) -> dict[str, float]:
    r"""The model's ELBO terms per data point, averaged over ``data``, and ``elbo``.

    One draw of :math:`z` per data point (the KL in closed form where available); for a VAE
    ``reconstruction`` and ``kl``, for a GMVAE ``reconstruction``, ``kl_z`` and ``kl_y``
    (label summed exactly). ``elbo`` is the reconstruction minus the KL terms.
    """
    batch_size = check_int(batch_size, "batch_size")
    model, data = _model_and_data(result, data, AmortizedModel, "elbo_terms")
    sums: dict[str, float] = {}
    with torch.no_grad(), torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, data.shape[0], batch_size):
            for name, value in model.elbo_terms(data[start : start + batch_size]).items():
                sums[name] = sums.get(name, 0.0) + float(value.sum())
    means = {name: value / data.shape[0] for name, value in sums.items()}
    names = list(model.term_names)
    means["elbo"] = means[names[0]] - sum(means[name] for name in names[1:])
    return means
