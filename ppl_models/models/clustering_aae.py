r"""Unsupervised clustering with an adversarial autoencoder (Makhzani et al. 2016, section 6).

The encoder has two heads on one trunk: a categorical one, :math:`y = \mathrm{softmax}(
\ell_\phi(x)) \in \Delta^{K-1}` (the cluster), and a style one, :math:`z \sim q_\phi(z \mid x)`
(deterministic or Gaussian, as in
:class:`~ppl_models.models.adversarial_autoencoder.AdversarialAutoencoder`). The decoder
reconstructs :math:`x` from :math:`[y, z]`. Two discriminators regularise the heads:
:math:`D_{\text{cat}}` tells one-hot draws of :math:`\mathrm{Cat}(1/K)` from the soft
assignments :math:`y`, which pushes them to be confident and the clusters to be used equally;
:math:`D_{\text{style}}` tells draws of the style prior :math:`p(z)` from the codes. The
generator (encoder and decoder) minimises the reconstruction cost plus both adversarial
losses; a test image's cluster is :math:`\arg\max_k y_k`.

The two discriminators are played in one step: :meth:`ClusteringAdversarialAutoencoder.
discriminate` returns their logits side by side, shape ``(B, 2)``, and the step's losses
average over both columns, i.e. each discriminator minimises its own cross-entropy (scaled by
1/2) and the generator their mean.

References
----------
Makhzani, A., Shlens, J., Jaitly, N., Goodfellow, I. & Frey, B. (2016). Adversarial
autoencoders. ICLR workshop (arXiv:1511.05644), section 6 and Table 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from ppl_models._shared.checks import check_int
from ppl_models.models.adversarial import Discriminator, observation_plate
from ppl_models.models.adversarial_autoencoder import RECONSTRUCTIONS, AdversarialAutoencoder
from ppl_models.models.protocols import AdversarialDraws
from ppl_models.nn import MIN_SCALE, MLPTrunk

__all__ = ["ClusteringAdversarialAutoencoder"]


class _ClusterStyleEncoder(nn.Module):
    """``x -> (logits (..., K), loc (..., L), scale (..., L) or None)`` on one MLP trunk."""

    def __init__(self, input_dim: int, n_clusters: int, latent_dim: int,
                 hidden: tuple[int, ...], activation: str, gaussian: bool) -> None:
        super().__init__()
        self.trunk = MLPTrunk(input_dim, hidden, activation)
        self.cluster_head = nn.Linear(self.trunk.feature_dim, n_clusters)
        self.style_head = nn.Linear(self.trunk.feature_dim, latent_dim)
        self.scale_head = nn.Linear(self.trunk.feature_dim, latent_dim) if gaussian else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        h = self.trunk(x)
        scale = None if self.scale_head is None else F.softplus(self.scale_head(h)) + MIN_SCALE
        return self.cluster_head(h), self.style_head(h), scale


class _TwoDiscriminators(nn.Module):
    """``[y, z] (..., K + L) -> (..., 2)``: the logits of :math:`D_{\\text{cat}}(y)` and
    :math:`D_{\\text{style}}(z)`."""

    def __init__(self, n_clusters: int, latent_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.n_clusters = n_clusters
        self.categorical = Discriminator(n_clusters, hidden)
        self.style = Discriminator(latent_dim, hidden)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        k = self.n_clusters
        return torch.stack([self.categorical(code[..., :k]), self.style(code[..., k:])], -1)


class ClusteringAdversarialAutoencoder(AdversarialAutoencoder):
    r"""Adversarial autoencoder with a categorical cluster code and a style code
    (Makhzani et al. 2016, section 6).

    .. math::

        y_n \sim \mathrm{Cat}(1/K),\quad z_n \sim p(z),\quad
        x_n \mid y_n, z_n \sim f(x \mid G_\theta([\mathrm{onehot}(y_n), z_n]));
        \qquad \text{encoder } (\mathrm{softmax}\,\ell_\phi(x),\ z \sim q_\phi(z \mid x))

    (module docstring for the two discriminators).

    Parameters
    ----------
    input_dim : int
        D.
    n_clusters : int
        K, the categories of the cluster code (16 or 30 for MNIST in the paper's Table 3).
    latent_dim : int
        L, size of the style code.
    prior : distribution, optional
        The style prior :math:`p(z)` (any distribution with ``sample``; default
        :math:`\mathcal N(0, I_L)`).
    reconstruction, hidden, d_hidden, activation, adversarial_weight, encoder
        As for :class:`~ppl_models.models.adversarial_autoencoder.AdversarialAutoencoder`
        (``encoder`` is the style head's; ``d_hidden`` is both discriminators' widths).
    """

    local_sites: ClassVar[tuple[str, ...]] = ("y", "z")
    name: ClassVar[str] = "clustering_aae"

    def __init__(
        self,
        input_dim: int,
        n_clusters: int,
        latent_dim: int = 5,
        *,
        prior: torch.distributions.Distribution | None = None,
        reconstruction: str = "squared",
        hidden: Sequence[int] | int = (256,),
        d_hidden: Sequence[int] | int = (64,),
        activation: str = "relu",
        adversarial_weight: float = 1.0,
        encoder: str = "deterministic",
    ) -> None:
        self.n_clusters = check_int(n_clusters, "n_clusters", minimum=2)
        super().__init__(input_dim, latent_dim, prior=prior, reconstruction=reconstruction,
                         hidden=hidden, d_hidden=d_hidden, activation=activation,
                         adversarial_weight=adversarial_weight, encoder=encoder)

    @property
    def code_dim(self) -> int:
        """Width of what the decoder takes: K + L."""
        return self.n_clusters + self.latent_dim

    def _make_encoder(self) -> nn.Module:
        return _ClusterStyleEncoder(self.input_dim, self.n_clusters, self.latent_dim,
                                    self.hidden, self.activation,
                                    self.encoder_kind == "gaussian")

    def _make_discriminator(self) -> nn.Module:
        return _TwoDiscriminators(self.n_clusters, self.latent_dim, self.d_hidden)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_clusters": self.n_clusters}

    def dims(self) -> dict[str, list[str]]:
        return {"y": ["obs"], "z": ["obs", "latent"], self.observed_site: ["obs", "feature"]}

    # ------------------------------------------------------------------ networks
    def cluster_probs(self, x: torch.Tensor) -> torch.Tensor:
        r"""The soft assignment :math:`y = \mathrm{softmax}(\ell_\phi(x))`, ``(..., K)``."""
        return self.encoder(x)[0].softmax(-1)

    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\arg\max_k y_k`, ``(...)`` int64."""
        return self.encoder(x)[0].argmax(-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        r"""The style code: :math:`E_\phi(x)` or the mean of :math:`q_\phi(z \mid x)`,
        ``(..., L)``."""
        return self.encoder(x)[1]

    def code_distribution(self, x: torch.Tensor) -> dist.Distribution:
        r""":math:`q_\phi(z \mid x)` of the style (Gaussian encoder only)."""
        if self.encoder_kind != "gaussian":
            raise ValueError("code_distribution needs encoder='gaussian'; this encoder is "
                             "deterministic (its style codes are encode(x))")
        _, loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)

    def sample_codes(self, x: torch.Tensor) -> torch.Tensor:
        r"""What the decoder and the discriminators see: :math:`[y, z]`, ``(..., K + L)``,
        with :math:`z` one reparameterised draw of the style (or :math:`E_\phi(x)`)."""
        logits, loc, scale = self.encoder(x)
        style = loc if scale is None else loc + scale * torch.randn_like(loc)
        return torch.cat([logits.softmax(-1), style], -1)

    # ------------------------------------------------------------------ generative model
    def _prior_codes(self, num: int) -> torch.Tensor:
        """``[onehot(y), z]`` for ``num`` draws of :math:`\\mathrm{Cat}(1/K)\\, p(z)`."""
        y = torch.randint(self.n_clusters, (num,))
        z = self.prior.sample((num,)).to(self.dtype)
        return torch.cat([F.one_hot(y, self.n_clusters).to(z.dtype), z], -1)

    def model(
        self,
        x: torch.Tensor | None = None,
        *,
        n_obs: int | None = None,
        subsample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""``y ~ Cat(1/K)``, ``z ~ p(z)``, ``x ~ f(x | G([onehot(y), z]))`` in the plate
        ``"data"``; simulates when ``x=None``."""
        pyro.module("decoder", self.decoder)
        density = RECONSTRUCTIONS[self.reconstruction][1]
        with observation_plate(self.local_plate, x, n_obs, subsample):
            logits = torch.zeros(self.n_clusters, dtype=self.dtype)
            y = pyro.sample("y", dist.Categorical(logits=logits))
            z = pyro.sample("z", self.prior)
            code = torch.cat([F.one_hot(y, self.n_clusters).to(z.dtype), z], -1)
            return pyro.sample(self.observed_site, density(self.decoder(code)), obs=x)

    def generate(self, num_samples: int) -> torch.Tensor:
        """``(num_samples, D)`` decoded draws of :math:`[\\mathrm{onehot}(y), z]`."""
        with torch.no_grad():
            return self.decode(self._prior_codes(num_samples))

    def adversarial_draws(self, x: torch.Tensor) -> AdversarialDraws:
        """Real: ``[onehot(y), z]`` from the priors; fake: the batch's :meth:`sample_codes`."""
        real = self._prior_codes(x.shape[0]).to(x.dtype)
        return AdversarialDraws(real=real, fake=self.sample_codes(x), context={})
