r"""Carry a clustering of the training images into a GMVAE: components from the grouped codes,
then the encoder taught the labels through the exact :math:`p(y \mid z)`.

A start found outside the model (:func:`~ppl_models.infer.graph_start.graph_start_labels`,
clusters of the codes' graph) is not made of Gaussian cells of the code space, so setting
the mixture's components from it is not enough: :math:`\arg\max_y p(y \mid z = \mu(x))`
would cut the clusters again along the Gaussian cells. Two steps carry it over:

1. **Components from the labels**: :math:`m_k`, :math:`s_k` the mean and standard deviation
   of the codes :math:`\mu_\phi(x_n)` labelled k, :math:`\pi_k` their share
   (:func:`init_prior_from_labels`);
2. **Warm start of the label posterior**: ``epochs`` epochs (Adam) of
   :math:`\sum_n \big[\log p_\theta(x_n \mid z_n) + w \log p(y = \ell_n \mid z_n)\big]`,
   :math:`z_n \sim q_\phi(z \mid x_n)`, over the encoder, the decoder and the components
   (:func:`warm_start_labels`): the cross-entropy of the GMVAE's own exact label posterior
   against the start's labels :math:`\ell_n` moves the codes into Gaussian cells that match
   the clusters, and the reconstruction keeps the decoder fitted to them.

The ELBO of :func:`~ppl_models.infer.fit_clustering_vae` then starts from a model whose
clusters are the start's; whether it keeps or improves them is measured, not assumed
(``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ppl_models._shared.checks import check_float, check_int
from ppl_models.models.mixture_vae import GMVAE

__all__ = ["init_prior_from_labels", "warm_start_labels"]


def _checked(model: GMVAE, data: torch.Tensor, labels: torch.Tensor | np.ndarray
             ) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(model, GMVAE) or model.conditional_encoder:
        raise ValueError("a label start needs a GMVAE with conditional_encoder=False; got "
                         f"{type(model).__name__}")
    data = model.validate(data)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"labels must be one per image, shape ({data.shape[0]},); got "
                         f"{tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= model.n_clusters:
        raise ValueError(f"labels must lie in 0..{model.n_clusters - 1}")
    return data, labels


def init_prior_from_labels(model: GMVAE, data: torch.Tensor,
                           labels: torch.Tensor | np.ndarray, *, batch_size: int = 1000,
                           min_scale: float = 1e-3) -> None:
    r"""Set the components to the moments of the codes grouped by ``labels``, in place.

    :math:`m_k = \overline{\mu_n}`, :math:`s_k = \max(\mathrm{sd}(\mu_n), s_{\min})` over
    :math:`\ell_n = k`, :math:`\pi_k` the share of label k (an empty label keeps its
    component and gets a share of :math:`10^{-6}`).
    """
    data, labels = _checked(model, data, labels)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        codes = torch.cat([model.encoder(data[i : i + batch_size])[0]
                           for i in range(0, data.shape[0], batch_size)]).double()
    model.train(was_training)
    prior = model.prior
    k = model.n_clusters
    onehot = F.one_hot(labels, k).double()
    count = onehot.sum(0)
    safe = count.clamp_min(1.0)[:, None]
    mean = onehot.T @ codes / safe
    var = onehot.T @ codes.pow(2) / safe - mean.pow(2)
    scale = var.clamp_min(0).sqrt().clamp_min(min_scale)
    empty = count == 0
    dtype = prior.locs.dtype
    with torch.no_grad():
        prior.locs[~empty] = mean[~empty].to(dtype)
        prior.log_scales[~empty] = scale[~empty].log().to(dtype)
        share = (count / count.sum()).clamp_min(1e-6)
        prior.logits.copy_(share.log().to(dtype))


def warm_start_labels(model: GMVAE, data: torch.Tensor, labels: torch.Tensor | np.ndarray,
                      *, epochs: int = 5, weight: float = 100.0, lr: float = 1e-3,
                      batch_size: int = 100, seed: int = 0) -> list[float]:
    r"""Teach the exact label posterior the start's labels (module docstring, step 2).

    Parameters
    ----------
    model : GMVAE
        ``conditional_encoder=False``; its components already set
        (:func:`init_prior_from_labels`).
    data : Tensor (N, D)
    labels : array (N,)
        The start's label of each image, in ``0 .. K-1``.
    epochs : int
        Passes over the data (shuffled, ``batch_size`` images a step).
    weight : float
        :math:`w`, the cross-entropy's weight against the reconstruction (both per image;
        the reconstruction of a binarized MNIST image is about 70 nats).
    lr : float
        Adam's rate.
    batch_size, seed : int

    Returns
    -------
    list of float
        Each epoch's mean agreement :math:`\frac1N\sum_n p(y = \ell_n \mid z_n)`.

    Raises
    ------
    ValueError
        Not a GMVAE with ``conditional_encoder=False``; labels not one per image in range;
        a non-positive epoch count or weight.
    """
    data, labels = _checked(model, data, labels)
    check_int(epochs, "epochs")
    check_float(weight, "weight", minimum=0)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    agreement = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(data.shape[0], generator=generator)
        total = 0.0
        for i in range(0, data.shape[0], batch_size):
            rows = order[i : i + batch_size]
            x, y = data[rows], labels[rows]
            z = model.encode(x).rsample()
            log_post = torch.log_softmax(model._log_joint_code_labels(z), -1)
            picked = log_post.gather(1, y[:, None]).squeeze(1)
            loss = -(model.decode(z).log_prob(x) + weight * picked).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += picked.detach().exp().sum().item()
        agreement.append(total / data.shape[0])
    return agreement
