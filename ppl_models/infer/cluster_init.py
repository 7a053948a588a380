r"""Start a VAE's mixture prior from a Gaussian mixture fitted by EM to its codes.

A mixture prior learned by SVI from a random start often merges digits or leaves components
empty. VaDE (Jiang et al. 2017) starts it instead from a Gaussian mixture fitted to the codes
of a (pre)trained encoder. Here the fit is :func:`~ppl_models.infer.em.fit_em` on
:class:`~ppl_models.models.gmm.GaussianMixture` with diagonal covariances, restarts keeping the
best, so that the prior's components begin where the codes actually cluster:

.. math:: m_k \leftarrow \hat\mu_k, \qquad s_k \leftarrow \hat\sigma_k, \qquad
    \pi_k \leftarrow \hat\pi_k

from EM on :math:`\{\mathbb E_q[z \mid x_n]\}_n`.

References
----------
Jiang, Z., Zheng, Y., Tan, H., Tang, B. & Zhou, H. (2017). Variational deep embedding: an
unsupervised and generative approach to clustering. IJCAI.
"""

from __future__ import annotations

from typing import Any

import torch

from ppl_models.infer.em import fit_em
from ppl_models.infer.result import FitResult
from ppl_models.models.gmm import GaussianMixture
from ppl_models.models.mixture_vae import GMVAE, MixtureOfGaussiansPrior
from ppl_models.models.vae import VAE

__all__ = ["init_prior_from_codes"]


def init_prior_from_codes(
    model: Any,
    data: torch.Tensor,
    *,
    n_init: int = 5,
    seed: int = 0,
    batch_size: int = 1000,
) -> FitResult:
    r"""Set a mixture prior's means, scales and weights from EM on the encoder's codes.

    Parameters
    ----------
    model : VAE or GMVAE
        A model whose prior is a :class:`~ppl_models.models.mixture_vae.MixtureOfGaussiansPrior`
        (``VAE(prior="mog")``, or a ``GMVAE`` with ``conditional_encoder=False``: with the
        conditional encoder the code depends on the label, so there is no single code per
        image to cluster). Its encoder should be trained already (a few epochs are enough).
    data : Tensor (N, D)
        Images, as the model takes them.
    n_init : int
        EM restarts (k-means++ starts); the best log-likelihood is kept.
    seed : int
    batch_size : int
        Images per encoder call.

    Returns
    -------
    FitResult
        The EM fit on the codes (``params``: ``weights``, ``locs``, ``scale``). The prior's
        ``locs``, ``log_scales`` and ``logits`` are overwritten in place (``logits`` also when
        the weights are fixed, e.g. the GMVAE's: then they stay fixed at the EM weights).

    Raises
    ------
    ValueError
        The prior is not a mixture of Gaussians, the encoder is conditional on the label, or
        there are fewer images than components.
    """
    prior = model.prior if isinstance(model, VAE) else None
    if not isinstance(prior, MixtureOfGaussiansPrior):
        raise ValueError(
            f"init_prior_from_codes needs a mixture-of-Gaussians prior; {type(model).__name__} "
            f"has {type(prior).__name__}"
        )
    if isinstance(model, GMVAE) and model.conditional_encoder:
        raise ValueError(
            "init_prior_from_codes needs one code per image: build the GMVAE with "
            "conditional_encoder=False (q(z | x) and the exact p(y | z))"
        )
    data = model.validate(data)
    k = prior.n_components
    if data.shape[0] < k:
        raise ValueError(f"{data.shape[0]} images cannot start {k} components")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        codes = torch.cat([model.encoder(data[i : i + batch_size])[0]
                           for i in range(0, data.shape[0], batch_size)])
    model.train(was_training)
    fit = fit_em(GaussianMixture(k, "diag"), codes, n_init=n_init, seed=seed, progress=False)
    dtype = prior.locs.dtype
    with torch.no_grad():
        prior.locs.copy_(fit.params["locs"].to(dtype))
        prior.log_scales.copy_(fit.params["scale"].to(dtype).log())
        prior.logits.copy_(fit.params["weights"].to(dtype).log())
    return fit
