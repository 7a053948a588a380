r"""Adversarial autoencoder whose mixture prior is shaped by labels (Makhzani et al. 2016,
section 4, "Incorporating label information in the adversarial regularization").

The prior is a mixture of K components :math:`p(z) = \sum_k \pi_k\, p_k(z)` and each training
row carries a label :math:`y_n \in \{0, \dots, K-1\}`, or :math:`-1` when it is unlabelled.
The discriminator sees the code together with a one-hot vector of K + 1 entries (the last one
for "no label"): for a labelled row the "real" draw comes from component :math:`y_n` alone and
the "fake" is its code, both shown with :math:`\mathrm{onehot}(y_n)`; for an unlabelled row
the real draw comes from the whole mixture, shown with the extra entry. The adversarial game
then matches :math:`q(z \mid y = k)` to :math:`p_k` for every label k and the unlabelled
codes to :math:`p`, so the codes of class k gather on component k (the paper's figure 4 b, c):
a semi-supervised map when only some rows are labelled, a supervised one when all are.

Data are the pixels with the label as one extra last column, ``(N, D + 1)``.

References
----------
Makhzani, A., Shlens, J., Jaitly, N., Goodfellow, I. & Frey, B. (2016). Adversarial
autoencoders. ICLR workshop (arXiv:1511.05644), section 4 and figure 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from ppl_models.data import check_data
from ppl_models.models.adversarial import Discriminator, observation_plate
from ppl_models.models.adversarial_autoencoder import RECONSTRUCTIONS, AdversarialAutoencoder
from ppl_models.models.protocols import AdversarialDraws

__all__ = ["UNLABELLED", "LabelledAdversarialAutoencoder", "with_labels"]

#: The label value of an unlabelled row.
UNLABELLED = -1


def with_labels(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(N, D + 1)``: the rows of ``x`` ``(N, D)`` with ``labels`` ``(N,)`` (``-1`` for
    unlabelled) as a last column, what :class:`LabelledAdversarialAutoencoder` is fitted on."""
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match x; got "
                         f"{tuple(labels.shape)}")
    return torch.cat([x, labels.to(x.dtype).unsqueeze(-1)], -1)


class LabelledAdversarialAutoencoder(AdversarialAutoencoder):
    r"""Adversarial autoencoder with a label-conditioned mixture prior (Makhzani et al. 2016,
    section 4).

    .. math::

        z_n \mid y_n \sim p_{y_n}(z) \ (p(z) \text{ when } y_n = -1), \quad
        x_n \mid z_n \sim f(x \mid G_\theta(z_n)); \qquad
        D_\psi([z, \mathrm{onehot}_{K+1}(y)])

    (module docstring).

    Parameters
    ----------
    input_dim : int
        D, pixels per row (the data have D + 1 columns: the label is the last).
    latent_dim : int
        L.
    prior : MixtureSameFamily
        A mixture of K components with event shape ``(L,)``; component k is the prior of
        label k.
    reconstruction, hidden, d_hidden, activation, adversarial_weight, encoder
        As for :class:`~ppl_models.models.adversarial_autoencoder.AdversarialAutoencoder`.
    """

    name: ClassVar[str] = "labelled_aae"

    def __init__(
        self,
        input_dim: int,
        latent_dim: int = 2,
        *,
        prior: dist.MixtureSameFamily,
        reconstruction: str = "squared",
        hidden: Sequence[int] | int = (256,),
        d_hidden: Sequence[int] | int = (64,),
        activation: str = "relu",
        adversarial_weight: float = 1.0,
        encoder: str = "deterministic",
    ) -> None:
        if not isinstance(prior, torch.distributions.MixtureSameFamily):
            raise ValueError(
                "prior must be a MixtureSameFamily (component k is the prior of label k); got "
                f"{type(prior).__name__}"
            )
        self.n_labels = int(prior.mixture_distribution.logits.shape[-1])
        super().__init__(input_dim, latent_dim, prior=prior, reconstruction=reconstruction,
                         hidden=hidden, d_hidden=d_hidden, activation=activation,
                         adversarial_weight=adversarial_weight, encoder=encoder)

    def _make_discriminator(self) -> nn.Module:
        return Discriminator(self.latent_dim + self.n_labels + 1, self.d_hidden)

    @classmethod
    def from_config(cls, config: dict[str, Any],
                    priors: dict[str, Any] | None = None) -> LabelledAdversarialAutoencoder:
        """The model :meth:`config` describes, with the saved mixture prior ``priors["z"]``."""
        prior = (priors or {}).get("z")
        if prior is None:
            raise ValueError("a labelled adversarial autoencoder needs its mixture prior: "
                             "priors['z'] is missing")
        return cls(**config, prior=prior)

    # ------------------------------------------------------------------ data
    def validate(self, data: Any) -> torch.Tensor:
        """``(N, D + 1)``: pixels, then labels in ``{-1, 0, ..., K-1}`` (:func:`with_labels`)."""
        data = check_data(data)
        if data.shape[-1] != self.input_dim + 1:
            raise ValueError(
                f"data must have input_dim + 1 = {self.input_dim + 1} columns (the label last, "
                f"see with_labels); got {data.shape[-1]}"
            )
        labels = data[:, -1]
        bad = (labels != labels.round()) | (labels < UNLABELLED) | (labels >= self.n_labels)
        if bool(bad.any()):
            value = float(labels[bad][0])
            raise ValueError(
                f"labels (the last column) must be whole numbers in -1..{self.n_labels - 1} "
                f"(-1: unlabelled); got {value}"
            )
        super().validate(data[:, :-1])
        return data.to(self.dtype)

    def split(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixels (B, D), labels (B,) int64)`` of rows laid out as :func:`with_labels`."""
        return data[..., :-1], data[..., -1].round().long()

    def conditional_prior(self, labels: torch.Tensor) -> dist.MixtureSameFamily:
        r""":math:`p(z \mid y_n)` per row, batch shape ``(B,)``: component :math:`y_n`
        (a mixture whose weights are one-hot), or the whole mixture for :math:`y_n = -1`."""
        logits = self.prior.mixture_distribution.logits
        labelled = labels >= 0
        onehot = F.one_hot(labels.clamp(min=0), self.n_labels).bool()
        masked = torch.where(onehot, torch.zeros((), dtype=logits.dtype),
                             torch.full((), -torch.inf, dtype=logits.dtype))
        row_logits = torch.where(labelled.unsqueeze(-1), masked, logits.expand_as(masked))
        components = self.prior.component_distribution
        components = components.expand(labels.shape + components.batch_shape)
        return dist.MixtureSameFamily(dist.Categorical(logits=row_logits), components)

    def _onehot(self, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``(B, K + 1)``: the label's one-hot, the last entry for unlabelled rows."""
        index = torch.where(labels >= 0, labels, torch.full_like(labels, self.n_labels))
        return F.one_hot(index, self.n_labels + 1).to(dtype)

    # ------------------------------------------------------------------ Pyro model
    def model(
        self,
        data: torch.Tensor | None = None,
        *,
        n_obs: int | None = None,
        subsample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""``z ~ p(z | y)``, ``x ~ f(x | G(z))`` in the plate ``"data"`` (the pixels of
        ``data`` observed, its labels given); simulates from the mixture when ``data=None``."""
        pyro.module("decoder", self.decoder)
        density = RECONSTRUCTIONS[self.reconstruction][1]
        x = None
        with observation_plate(self.local_plate, data, n_obs, subsample):
            if data is None:
                z = pyro.sample("z", self.prior)
            else:
                x, labels = self.split(data)
                z = pyro.sample("z", self.conditional_prior(labels))
            return pyro.sample(self.observed_site, density(self.decoder(z)), obs=x)

    # ------------------------------------------------------------------ the game
    def adversarial_draws(self, data: torch.Tensor) -> AdversarialDraws:
        """Real: ``[z, onehot(y)]``, ``z ~ p(z | y)``; fake: ``[code, onehot(y)]``, the code
        one draw of :math:`q(z \\mid x)`; the codes alone in ``context["codes"]``."""
        x, labels = self.split(data)
        onehot = self._onehot(labels, x.dtype)
        real = self.conditional_prior(labels).sample().to(x.dtype)
        codes = self.sample_codes(x)
        return AdversarialDraws(real=torch.cat([real, onehot], -1),
                                fake=torch.cat([codes, onehot], -1), context={"codes": codes})

    def generator_terms(self, data: torch.Tensor,
                        draws: AdversarialDraws) -> dict[str, torch.Tensor]:
        r"""``reconstruction``: :math:`\frac1B \sum_i c(x_i, G(z_i))` on the pixels."""
        x, _ = self.split(data)
        return {"reconstruction": self.reconstruction_cost(x, draws.context["codes"]).mean()}
