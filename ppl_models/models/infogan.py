r"""InfoGAN: a GAN whose latent codes are made informative about its samples (Chen et al. 2016).

.. math::

    z_n \sim \mathcal N(0, I), \quad c_n \sim \mathrm{Categorical}(1/K), \quad
    s_n \sim \mathcal U(-1, 1)^M, \qquad x_n = G_\theta(z_n, c_n, s_n).

Besides the GAN game, the generator maximises the mutual information :math:`I(c, s;\, G(z, c,
s))` through its variational lower bound (Chen et al. 2016, Lemma 5.1 and eq. 4)

.. math::

    L_I(G, Q) = \mathbb E_{c, s \sim p,\ x \sim G(z, c, s)}[\log Q(c, s \mid x)]
        + H(c, s) \le I(c, s;\, G(z, c, s)),

tight when :math:`Q(c, s \mid x)` is the true posterior. Here
:math:`Q(c, s \mid x) = \mathrm{Categorical}(c; \pi_\omega(x))\, \mathcal N(s; \mu_\omega(x),
I)` (a factored Gaussian with unit scale for the continuous codes, as in the paper), and the
generator's term is :math:`-\lambda\,(\mathbb E \log Q(c \mid x) + \lambda_s\, \mathbb E \log
Q(s \mid x))`, minimised jointly by :math:`G` and :math:`Q` (the entropy :math:`H` is a
constant). Unlike the paper, :math:`Q` has its own trunk instead of sharing the
discriminator's layers: the bound holds for any :math:`Q`, and the two players' parameters stay
disjoint (:class:`~ppl_models.infer.trainer.steps.AdversarialStep` requires it).

References
----------
Chen, X., Duan, Y., Houthooft, R., Schulman, J., Sutskever, I. & Abbeel, P. (2016). InfoGAN:
interpretable representation learning by information maximizing generative adversarial nets.
NeurIPS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from ppl_models._shared.checks import check_choice, check_float, check_int
from ppl_models.models.adversarial import (
    ConvDiscriminator,
    ConvGenerator,
    Discriminator,
    observation_plate,
)
from ppl_models.models.gan import GAN
from ppl_models.models.protocols import AdversarialDraws
from ppl_models.nn import MLPDecoder, MLPTrunk

__all__ = ["INFOGAN_ARCHITECTURES", "CodeInference", "InfoGAN"]

#: The networks InfoGAN can be built with.
INFOGAN_ARCHITECTURES: tuple[str, ...] = ("mlp", "conv")


class CodeInference(nn.Module):
    r""":math:`Q(c, s \mid x)`: a trunk, then logits over ``K`` categories and ``M`` means."""

    def __init__(self, trunk: nn.Module, feature_dim: int, n_categories: int,
                 n_continuous: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.n_categories = n_categories
        self.head = nn.Linear(feature_dim, n_categories + n_continuous)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.trunk(x))
        return out[..., : self.n_categories], out[..., self.n_categories:]


class _ConvFeatures(nn.Module):
    """The convolutional trunk of a DCGAN discriminator, as features."""

    def __init__(self, channels: tuple[int, int]) -> None:
        super().__init__()
        self.net = ConvDiscriminator(784, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


class InfoGAN(GAN):
    r"""InfoGAN with a categorical and continuous codes (Chen et al. 2016).

    .. math::

        z \sim \mathcal N(0, I_L),\ c \sim \mathrm{Cat}(1/K),\ s \sim \mathcal U(-1, 1)^M,\
        x = G(z, \mathrm{onehot}(c), s)

    The Pyro model has sites ``z``, ``code`` (the category), ``style`` (the continuous codes)
    and ``x`` (a ``Delta`` at the generator's output); see the module docstring for the
    information term :meth:`generator_terms` adds to the GAN game.

    Parameters
    ----------
    data_dim : int
        D (784 for ``architecture="conv"``).
    latent_dim : int
        L, size of the incompressible noise z (the paper's MNIST value: 62).
    n_categories : int
        K, categories of the code c (10 for digits).
    n_continuous : int
        M, continuous codes s (2 in the paper: width and slant).
    architecture : {"mlp", "conv"}
        MLP networks (``hidden``, ``d_hidden``, ``q_hidden``) or DCGAN convolutions for
        ``1 x 28 x 28`` images (``channels``).
    info_weight, continuous_weight : float
        :math:`\lambda` (1 in the paper) and :math:`\lambda_s`, the weight of the continuous
        codes' term inside it.
    output : {"real", "unit"}
    """

    local_sites: ClassVar[tuple[str, ...]] = ("z", "code", "style")
    name: ClassVar[str] = "infogan"

    def __init__(
        self,
        data_dim: int,
        latent_dim: int = 62,
        *,
        n_categories: int = 10,
        n_continuous: int = 2,
        architecture: str = "mlp",
        hidden: Sequence[int] | int = (128,),
        d_hidden: Sequence[int] | int = (128,),
        q_hidden: Sequence[int] | int = (128,),
        channels: Sequence[int] = (64, 128),
        activation: str = "relu",
        info_weight: float = 1.0,
        continuous_weight: float = 1.0,
        output: str = "real",
    ) -> None:
        self.n_categories = check_int(n_categories, "n_categories", minimum=2)
        self.n_continuous = check_int(n_continuous, "n_continuous", minimum=0)
        self.architecture = check_choice(architecture, "architecture", INFOGAN_ARCHITECTURES)
        self.q_hidden = (q_hidden,) if isinstance(q_hidden, int) else tuple(q_hidden)
        channels = tuple(check_int(c, f"channels[{i}]") for i, c in enumerate(channels))
        if len(channels) != 2:
            raise ValueError(f"channels must hold 2 widths; got {list(channels)}")
        self.channels: tuple[int, int] = (channels[0], channels[1])
        self.info_weight = check_float(info_weight, "info_weight", minimum=0)
        self.continuous_weight = check_float(continuous_weight, "continuous_weight", minimum=0)
        super().__init__(data_dim, latent_dim, hidden=hidden, d_hidden=d_hidden,
                         activation=activation, output=output)
        self.code_inference = self._make_code_inference()

    @property
    def input_width(self) -> int:
        """Width of the generator's input ``[z, onehot(c), s]``."""
        return self.latent_dim + self.n_categories + self.n_continuous

    def _make_generator(self) -> nn.Module:
        if self.architecture == "conv":
            return ConvGenerator(self.input_width, self.data_dim, self.channels)
        return MLPDecoder(self.input_width, self.data_dim, self.hidden, self.activation)

    def _make_discriminator(self) -> nn.Module:
        if self.architecture == "conv":
            return ConvDiscriminator(self.data_dim, self.channels)
        return Discriminator(self.data_dim, self.d_hidden)

    def _make_code_inference(self) -> CodeInference:
        if self.architecture == "conv":
            trunk: nn.Module = _ConvFeatures(self.channels)
            width = self.channels[1] * 7 * 7
        else:
            mlp = MLPTrunk(self.data_dim, self.q_hidden, self.activation)
            trunk, width = mlp, mlp.feature_dim
        return CodeInference(trunk, width, self.n_categories, self.n_continuous)

    # ------------------------------------------------------------------ structure
    def config(self) -> dict[str, Any]:
        config = {
            **super().config(),
            "n_categories": self.n_categories,
            "n_continuous": self.n_continuous,
            "architecture": self.architecture,
            "q_hidden": list(self.q_hidden),
            "channels": list(self.channels),
            "info_weight": self.info_weight,
            "continuous_weight": self.continuous_weight,
        }
        # Only the widths of the networks built (the saved weights must bear them out).
        unused = ("channels",) if self.architecture == "mlp" else ("hidden", "d_hidden")
        for name in unused:
            config.pop(name, None)
        return config

    def dims(self) -> dict[str, list[str]]:
        return {"z": ["obs", "latent"], "code": ["obs"], "style": ["obs", "style"],
                self.observed_site: ["obs", "feature"]}

    # ------------------------------------------------------------------ generative model
    def code_distributions(self) -> tuple[dist.Distribution, dist.Distribution]:
        r""":math:`p(c) = \mathrm{Cat}(1/K)` and :math:`p(s) = \mathcal U(-1, 1)^M`."""
        loc = self.prior_loc
        categorical = dist.Categorical(logits=loc.new_zeros(self.n_categories))
        style = dist.Uniform(-loc.new_ones(self.n_continuous),
                             loc.new_ones(self.n_continuous)).to_event(1)
        return categorical, style

    def transform_codes(self, z: torch.Tensor, code: torch.Tensor,
                        style: torch.Tensor) -> torch.Tensor:
        r""":math:`G(z, \mathrm{onehot}(c), s)`, ``(..., D)``."""
        onehot = F.one_hot(code, self.n_categories).to(z.dtype)
        return self.transform(torch.cat([z, onehot, style], -1))

    def _draw(self, num: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        categorical, style = self.code_distributions()
        z = self.prior_distribution().sample((num,))
        return z, categorical.sample((num,)), style.sample((num,))

    def model(
        self,
        x: torch.Tensor | None = None,
        *,
        n_obs: int | None = None,
        subsample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""``z``, ``code``, ``style`` from their priors; ``x = G(z, c, s)`` (``Delta``)."""
        pyro.module("generator", self.generator)
        categorical, style_prior = self.code_distributions()
        with observation_plate(self.local_plate, x, n_obs, subsample):
            z = pyro.sample("z", self.prior_distribution())
            code = pyro.sample("code", categorical)
            style = pyro.sample("style", style_prior)
            value = self.transform_codes(z, code, style)
            return pyro.sample(self.observed_site, dist.Delta(value, event_dim=1), obs=x)

    def generate(self, num_samples: int) -> torch.Tensor:
        with torch.no_grad():
            return self.transform_codes(*self._draw(num_samples))

    def infer_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`Q`'s logits over the category ``(B, K)`` and means of the codes ``(B, M)``."""
        return self.code_inference(x)

    # ------------------------------------------------------------------ the game
    def generator_parameters(self) -> list[nn.Parameter]:
        """The generator's and :math:`Q`'s."""
        return [*self.generator.parameters(), *self.code_inference.parameters()]

    def adversarial_draws(self, x: torch.Tensor) -> AdversarialDraws:
        """Real: the batch; fake: :math:`G(z, c, s)`, with ``code`` and ``style`` in the
        context."""
        z, code, style = self._draw(x.shape[0])
        return AdversarialDraws(real=x, fake=self.transform_codes(z, code, style),
                                context={"code": code, "style": style})

    def generator_terms(self, x: torch.Tensor, draws: AdversarialDraws) -> dict[str, torch.Tensor]:
        r"""``information``: :math:`-\lambda (\frac1B \sum_i \log Q(c_i \mid x_i) + \lambda_s
        \frac1B \sum_i \log \mathcal N(s_i; \mu(x_i), I))` on the fake draws, i.e.
        :math:`-\lambda (L_I - H)` (module docstring)."""
        logits, means = self.code_inference(draws.fake)
        log_q = dist.Categorical(logits=logits).log_prob(draws.context["code"]).mean()
        if self.n_continuous:
            style = draws.context["style"]
            log_q = log_q + self.continuous_weight * dist.Normal(means, 1.0).log_prob(
                style).sum(-1).mean()
        return {"information": -self.info_weight * log_q}
