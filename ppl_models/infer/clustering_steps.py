r"""Two step strategies of the minibatch trainer for clustering with a VAE (VaDE's recipe).

=============== =================================================================================
name            what a step differentiates
=============== =================================================================================
``autoencoder`` the reconstruction through one draw of the encoder, without the KL,
                :math:`\frac{N}{B} \sum_{n \in B} \log p_\theta(x_n \mid z_n)`,
                :math:`z_n \sim q_\phi(z \mid x_n)` (VaDE's pretraining, Jiang et al.
                2017, section 3.3, made stochastic; see :class:`AutoencoderStep`)
``clustering``  a GMVAE's :meth:`~ppl_models.models.GMVAE.training_objective`: its ELBO with
                the label summed out exactly, plus the free-bits and balance terms it is
                built with
=============== =================================================================================

Both are registered in :data:`ppl_models.infer.trainer.STEPS` when this module is imported
(``ppl_models.infer`` imports it), so ``fit_svi(model, x, objective="autoencoder",
num_epochs=...)`` runs them with the trainer's batches, schedules, checkpoints and resume.

References
----------
Jiang, Z., Zheng, Y., Tan, H., Tang, B. & Zhou, H. (2017). Variational deep embedding: an
unsupervised and generative approach to clustering. IJCAI.
"""

from __future__ import annotations

from typing import Any

import torch

from ppl_models.infer.trainer.steps import STEPS, Step, StepInputs
from ppl_models.models.mixture_vae import GMVAE
from ppl_models.models.vae import VAE

__all__ = ["AutoencoderStep", "ClusteringStep"]


class _Adam(Step):
    """One ``torch.optim.Adam`` over all of the model's parameters, decayed geometrically
    to ``lr * lr_decay`` over ``total_steps`` (``ExponentialLR``)."""

    def __init__(self, model: Any, lr: float, lr_decay: float, total_steps: int) -> None:
        super().__init__()
        self.model = model
        optimizer = torch.optim.Adam(list(model.parameters()), lr=lr)
        self.optimizers = [optimizer]
        self.schedulers = [
            torch.optim.lr_scheduler.ExponentialLR(optimizer, lr_decay ** (1 / total_steps))
        ]

    def _update(self, loss: torch.Tensor) -> float:
        optimizer, scheduler = self.optimizers[0], self.schedulers[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return loss.item()


class AutoencoderStep(_Adam):
    r"""Pretraining as a stochastic autoencoder: maximise
    :math:`\sum_n \mathbb E_{q_\phi(z \mid x_n)} \log p_\theta(x_n \mid z)`, the ELBO with
    the KL weight at 0 (one reparameterised draw per image).

    Why not the deterministic autoencoder of VaDE (:math:`z = \mu_\phi(x)`): it leaves the
    encoder's scale where it started (about 0.7), while the codes it learns cluster at scales
    of 0.01-0.1, so the first steps of the ELBO draw codes far outside their clusters, the
    label posteriors :math:`p(y \mid z)` turn to noise and the mixture started by EM is lost
    (measured: 1.0 clustering accuracy after the EM start, 0.5 after the ELBO). Training the
    scale with the reconstruction shrinks it below the clusters' spread instead. The prior
    plays no part; the KL weight is ignored. The loss
    returned is the negative sum scaled to the whole data, :math:`-\frac{N}{B}\sum_{n\in B}`,
    like the ELBO steps, so ``history["elbo"]`` holds the mean reconstruction log-likelihood.
    """

    name = "autoencoder"

    def __init__(self, model: VAE, lr: float, lr_decay: float, total_steps: int) -> None:
        if not isinstance(model, VAE) or (isinstance(model, GMVAE) and model.conditional_encoder):
            raise ValueError(
                "the autoencoder step needs a VAE whose encoder reads the image alone (a "
                f"GMVAE with conditional_encoder=False); got {type(model).__name__}"
                + (" with conditional_encoder=True" if isinstance(model, GMVAE) else "")
            )
        super().__init__(model, lr, lr_decay, total_steps)

    @classmethod
    def build(cls, inputs: StepInputs) -> AutoencoderStep:
        return cls(inputs.model, inputs.lr, inputs.lr_decay, inputs.total_steps)

    def __call__(self, x: torch.Tensor, *, n_obs: int, subsample: torch.Tensor) -> float:
        z = self.model.encode(x).rsample()
        reconstruction = self.model.decode(z).log_prob(x)
        return self._update(reconstruction.sum() * (-n_obs / x.shape[0]))


class ClusteringStep(_Adam):
    r"""The GMVAE's training objective (:meth:`~ppl_models.models.GMVAE.training_objective`,
    label summed out exactly), times :math:`-N`, with the epoch's KL weight :math:`\beta`."""

    name = "clustering"

    def __init__(self, model: GMVAE, lr: float, lr_decay: float, total_steps: int) -> None:
        if not isinstance(model, GMVAE):
            raise ValueError(
                f"the clustering step trains a GMVAE; got {type(model).__name__}"
            )
        super().__init__(model, lr, lr_decay, total_steps)

    @classmethod
    def build(cls, inputs: StepInputs) -> ClusteringStep:
        return cls(inputs.model, inputs.lr, inputs.lr_decay, inputs.total_steps)

    def __call__(self, x: torch.Tensor, *, n_obs: int, subsample: torch.Tensor) -> float:
        return self._update(self.model.training_objective(x, self.beta) * -n_obs)


STEPS.update({AutoencoderStep.name: AutoencoderStep.build,
              ClusteringStep.name: ClusteringStep.build})
