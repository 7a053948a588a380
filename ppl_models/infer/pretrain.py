r"""Fit a GMVAE that clusters: pretrained autoencoder, a start of the mixture, then the ELBO.

VaDE's recipe (Jiang et al. 2017, section 3.3) for the GMVAE with the label summed out
exactly (:class:`~ppl_models.models.GMVAE` with ``conditional_encoder=False``):

1. **Pretraining**: ``pretrain_epochs`` epochs of the encoder and the decoder as a
   stochastic autoencoder, :math:`\max \sum_n \mathbb E_{q_\phi(z \mid x_n)}
   \log p_\theta(x_n \mid z)` (the ``autoencoder`` step of
   :mod:`ppl_models.infer.clustering_steps`; VaDE's is deterministic, see there why not).
   Without it the codes of an untrained encoder carry no cluster structure, and a mixture
   started on them (or at random) merges clusters for good.
2. **Start of the mixture** (``start``):

   * ``"graph"`` (the default): the codes :math:`\mu_\phi(x_n)` are clustered along their
     k-nearest-neighbour graph (spectral embedding and a Gaussian mixture in it, N2D's
     recipe; :func:`~ppl_models.infer.graph_start.graph_start_labels`), the components set
     to the moments of the codes of each cluster, and ``warm_start_epochs`` epochs teach the
     exact label posterior :math:`p(y \mid z)` those clusters
     (:mod:`ppl_models.infer.label_start`). On binarized MNIST this start is what lifts the
     accuracy from 0.65-0.72 to 0.895-0.911 on three seeds (``benchmarks/RESULTS.md``);
   * ``"em"``: a diagonal Gaussian mixture fitted by EM (``n_init`` restarts) to the codes
     sets the prior's means, scales and weights
     (:func:`~ppl_models.infer.init_prior_from_codes`; VaDE's start); optionally
     (``match_encoder_variance``) :func:`widen_components` adds the encoder's own variance
     to each component's, so that the mixture matches the codes the ELBO draws,
     :math:`z \sim q_\phi(z \mid x)`, and not only their means.
3. **The ELBO**: ``num_epochs`` epochs of the ``clustering`` step, the model's
   :meth:`~ppl_models.models.GMVAE.training_objective` (the ELBO with the label summed out,
   plus the model's free-bits and balance terms), with KL warm-up (annealing) over
   ``kl_warmup_epochs``.

Each stage is :func:`~ppl_models.infer.fit_svi` with the trainer's checkpoints: with
``checkpoint_dir`` the pretraining writes ``checkpoint_dir/pretrain/checkpoint.pt`` and the
main fit ``checkpoint_dir/checkpoint.pt``, so ``resume=True`` continues an interrupted run at
whichever stage it stopped (the EM start is deterministic given the pretrained networks and
the seed, and the main checkpoint holds the prior it set).

References
----------
Jiang, Z., Zheng, Y., Tan, H., Tang, B. & Zhou, H. (2017). Variational deep embedding: an
unsupervised and generative approach to clustering. IJCAI.
Dilokthanakul, N. et al. (2016). Deep unsupervised clustering with Gaussian mixture
variational autoencoders. arXiv:1611.02648.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppl_models._shared.checks import check_int
from ppl_models.infer import clustering_steps  # noqa: F401  (registers the steps)
from ppl_models.infer.cluster_init import init_prior_from_codes
from ppl_models.infer.graph_start import graph_start_labels
from ppl_models.infer.label_start import init_prior_from_labels, warm_start_labels
from ppl_models.infer.result import FitResult
from ppl_models.infer.svi import fit_svi
from ppl_models.models.mixture_vae import GMVAE

__all__ = ["fit_clustering_vae", "widen_components"]

#: The checkpoint file the trainer writes in its folder.
_CHECKPOINT = "checkpoint.pt"


def widen_components(model: GMVAE, data: torch.Tensor, *, batch_size: int = 1000) -> None:
    r"""Moment-match the prior's components to the aggregate posterior, in place.

    EM on the code means :math:`\mu_n` gives each component the spread of the means only;
    the ELBO sees draws :math:`z_n \sim \mathcal N(\mu_n, \mathrm{diag}\,\sigma_n^2)`,
    whose variance within component k is, by the law of total variance,

    .. math:: s_k^2 \leftarrow s_k^2 + \frac{\sum_n r_{nk} \sigma_n^2}{\sum_n r_{nk}},
        \qquad r_{nk} = p(y = k \mid z = \mu_n).

    Without it a component tighter than the encoder's noise receives no draws, and the
    first epochs of the ELBO empty it (measured on two clusters of code spreads 0.006 and
    0.1 under an encoder scale of 0.04: accuracy 1.0 after EM, 0.53 after one epoch).
    """
    prior = model.prior
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total = torch.zeros_like(prior.locs, dtype=torch.float64)
        weight = torch.zeros(prior.n_components, dtype=torch.float64)
        for i in range(0, data.shape[0], batch_size):
            _, scale = model.encoder(data[i : i + batch_size])
            r = torch.softmax(model.label_posterior_logits(data[i : i + batch_size]), -1)
            total += r.double().T @ scale.double().pow(2)
            weight += r.double().sum(0)
        extra = total / weight.clamp_min(1e-12)[:, None]
        variance = prior.log_scales.double().exp().pow(2) + extra
        prior.log_scales.copy_((0.5 * variance.log()).to(prior.log_scales.dtype))
    model.train(was_training)


def _graph_start(model: GMVAE, data: torch.Tensor, epochs: int, batch_size: int,
                 seed: int) -> dict[str, Any]:
    """Stage 2 with ``start="graph"``: graph labels, components, label warm start."""
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        codes = torch.cat([model.encoder(data[i : i + 1000])[0]
                           for i in range(0, data.shape[0], 1000)])
    model.train(was_training)
    labels = graph_start_labels(codes, model.n_clusters, seed=seed)
    init_prior_from_labels(model, data, labels)
    agreement = (warm_start_labels(model, data, labels, epochs=epochs, batch_size=batch_size,
                                   seed=seed) if epochs else [])
    return {"sizes": np.bincount(labels, minlength=model.n_clusters).tolist(),
            "agreement": agreement, "seconds": time.perf_counter() - started}


def fit_clustering_vae(
    model: GMVAE,
    data: torch.Tensor,
    *,
    pretrain_epochs: int = 20,
    num_epochs: int = 50,
    batch_size: int = 100,
    lr: float = 1e-3,
    lr_decay: float = 0.1,
    pretrain_lr: float = 1e-3,
    kl_warmup_epochs: int = 0,
    n_init: int = 5,
    match_encoder_variance: bool = False,
    start: str = "graph",
    warm_start_epochs: int = 3,
    start_callback: Callable[[GMVAE], None] | None = None,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    time_limit: float | None = None,
    callback: Callable[[int, dict], bool | None] | None = None,
    progress: bool | None = False,
) -> FitResult:
    r"""Pretrain, start the mixture on the codes (graph or EM), then fit the GMVAE's objective.

    Parameters
    ----------
    model : GMVAE
        With ``conditional_encoder=False`` (one code per image, the label's posterior
        :math:`p(y \mid z)` exact); its ``free_bits`` and ``balance_weight`` shape the
        objective of stage 3.
    data : Tensor (N, D)
    pretrain_epochs : int
        Epochs of stage 1 (0 skips it and the EM start: the mixture stays where it is).
    num_epochs, batch_size, lr, lr_decay, kl_warmup_epochs
        Stage 3, as for :func:`~ppl_models.infer.fit_svi` (``batch_size`` also for stage 1).
    pretrain_lr : float
        Adam's rate in stage 1 (decayed by ``lr_decay`` over the stage).
    n_init : int
        EM restarts of stage 2 with ``start="em"``.
    start : {"graph", "em"}
        Stage 2 (see the module docstring): the codes' graph, then the label warm start
        (default), or VaDE's EM on the codes.
    warm_start_epochs : int
        Epochs of the label warm start after the graph start
        (:func:`~ppl_models.infer.label_start.warm_start_labels`; 0 = components only).
    start_callback : callable, optional
        ``start_callback(model)`` once stage 2 is done, before the ELBO (to score the start).
    match_encoder_variance : bool
        After the EM start, add the encoder's variance to the components'
        (:func:`widen_components`). Off by default: no gain measured on the digits (the same
        accuracies on three seeds) and a loss on a synthetic set with one cluster tighter than
        the encoder's noise (it then merged into its neighbour).
    seed : int
    checkpoint_dir : path, optional
        Checkpoints of both stages (see the module docstring).
    resume : bool
        Continue from ``checkpoint_dir``: the main fit if it has begun, else the pretraining.
    overwrite : bool
        Discard the checkpoints ``checkpoint_dir`` holds (otherwise a folder that holds one
        is refused unless ``resume``).
    time_limit : float, optional
        Seconds of training, per call, after which no new epoch starts; the pretraining gets
        the whole limit, the main fit what the pretraining and the EM start left.
    callback : callable, optional
        ``callback(epoch, history)`` after each epoch of stage 3 (as for ``fit_svi``).
    progress : bool or None

    Returns
    -------
    FitResult
        Stage 3's fit; ``info["pretrain"]`` holds stage 1's epochs, seconds and final
        reconstruction log-likelihood per image (None when resumed past it or skipped),
        ``info["em_log_likelihood"]`` the EM fit's mean log-likelihood of the codes
        (``start="em"``), ``info["start"]`` the graph start's cluster sizes, seconds and
        the warm start's agreement per epoch (``start="graph"``; None when resumed past it).

    Raises
    ------
    ValueError
        ``model`` is not a GMVAE with ``conditional_encoder=False``, or an epoch count is
        not a non-negative integer (``num_epochs`` at least 1).
    """
    if not isinstance(model, GMVAE) or model.conditional_encoder:
        raise ValueError(
            "fit_clustering_vae needs a GMVAE with conditional_encoder=False (one code per "
            f"image to start the mixture from); got {type(model).__name__}"
            + (" with conditional_encoder=True" if isinstance(model, GMVAE) else "")
        )
    check_int(pretrain_epochs, "pretrain_epochs", minimum=0)
    check_int(num_epochs, "num_epochs")
    check_int(warm_start_epochs, "warm_start_epochs", minimum=0)
    if start not in ("graph", "em"):
        raise ValueError(f"start must be 'graph' or 'em'; got {start!r}")
    main_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    pre_dir = None if main_dir is None else main_dir / "pretrain"
    started = time.perf_counter()
    main_begun = resume and main_dir is not None and (main_dir / _CHECKPOINT).exists()
    pretrain_info, em_loglik, start_info = None, None, None
    if pretrain_epochs and not main_begun:
        pretrained = fit_svi(
            model, data, objective="autoencoder", batch_size=batch_size,
            num_epochs=pretrain_epochs, lr=pretrain_lr, lr_decay=lr_decay, seed=seed,
            checkpoint_dir=pre_dir, resume=resume, overwrite=overwrite,
            time_limit=time_limit, progress=progress,
        )
        pretrain_info = {"epochs": pretrained.n_iter, "seconds": pretrained.fit_seconds,
                         "reconstruction": pretrained.history["elbo"][-1],
                         "stopped_by": pretrained.info.get("stopped_by")}
        if pretrained.info.get("stopped_by") == "time_limit":
            return dataclasses.replace(
                pretrained, info={**pretrained.info, "pretrain": pretrain_info,
                                  "stage": "pretrain"})
        if start == "em":
            em = init_prior_from_codes(model, data, n_init=n_init, seed=seed)
            em_loglik = em.info.get("mean_log_likelihood")
            if match_encoder_variance:
                widen_components(model, data)
        else:
            start_info = _graph_start(model, data, warm_start_epochs, batch_size, seed)
        if start_callback is not None:
            start_callback(model)
    remaining = None
    if time_limit is not None:
        remaining = max(time_limit - (time.perf_counter() - started), 1e-3)
    result = fit_svi(
        model, data, objective="clustering", batch_size=batch_size, num_epochs=num_epochs,
        lr=lr, lr_decay=lr_decay, kl_warmup_epochs=kl_warmup_epochs, seed=seed,
        checkpoint_dir=main_dir, resume=resume,
        overwrite=overwrite,
        time_limit=remaining, callback=callback, progress=progress,
    )
    info: dict[str, Any] = {**result.info, "pretrain": pretrain_info,
                            "em_log_likelihood": em_loglik, "start": start_info,
                            "stage": "clustering"}
    return dataclasses.replace(result, info=info)
