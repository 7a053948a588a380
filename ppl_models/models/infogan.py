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
I)` (a factored Gaussian with unit scale for the continuous codes), and the generator's term
is :math:`-\lambda\,(\mathbb E \log Q(c \mid x) + \lambda_s\, \mathbb E \log Q(s \mid x))` on
the generated draws, minimised jointly by :math:`G` and :math:`Q` (the entropy :math:`H` is a
constant; Chen et al. use :math:`\lambda = 1` for discrete codes and a smaller weight for
continuous ones).

As in the paper, :math:`Q` shares the discriminator's body (``share_discriminator=True``, the
default): :math:`Q(\cdot \mid x)` is a small head (one hidden layer, the paper's 128 units)
on the discriminator's last hidden features. The head belongs to the generator's player (its
optimiser, Chen et al.'s learning rate 1e-3 for :math:`G` and :math:`Q`); the shared body is
the discriminator's and is trained by :math:`L_D` only (the gradient of the information term
that reaches it in the generator's step is discarded), which keeps the two players'
parameters disjoint as :class:`~ppl_models.infer.trainer.steps.AdversarialStep` requires; a
common reimplementation of the paper does the same. ``share_discriminator=False`` gives
:math:`Q` its own trunk (the bound holds for any :math:`Q`).

``architecture="conv"`` builds the networks of Chen et al. (2016), appendix C.1 (MNIST):

* :math:`D`: conv 64 4x4 stride 2, leaky ReLU; conv 128 4x4 stride 2, batch norm, leaky
  ReLU; FC 1024, batch norm, leaky ReLU; FC to the logit;
* :math:`Q`: on :math:`D`'s 1024 features, FC 128, batch norm, leaky ReLU; FC to the codes;
* :math:`G`: FC 1024, batch norm, ReLU; FC 7x7x128, batch norm, ReLU; deconv 64 4x4 stride
  2, batch norm, ReLU; deconv 1 4x4 stride 2 (then the sigmoid of ``output="unit"``).

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
    Discriminator,
    downsample_image,
    observation_plate,
    upsample_to_image,
)
from ppl_models.models.gan import GAN
from ppl_models.models.protocols import AdversarialDraws
from ppl_models.nn import IMAGE_SHAPE, MLPDecoder, MLPTrunk, check_image_dim

__all__ = ["INFOGAN_ARCHITECTURES", "CodeInference", "InfoGAN", "PaperConvDiscriminator",
           "PaperConvGenerator"]

#: The networks InfoGAN can be built with.
INFOGAN_ARCHITECTURES: tuple[str, ...] = ("mlp", "conv")


class CodeInference(nn.Module):
    r""":math:`Q(c, s \mid x)`: a trunk, then logits over ``K`` categories and ``M`` means.

    With a shared discriminator body the trunk is :math:`Q`'s own hidden layers on the
    discriminator's features (:meth:`InfoGAN.infer_codes`), otherwise a trunk on ``x``.
    """

    def __init__(self, trunk: nn.Module, feature_dim: int, n_categories: int,
                 n_continuous: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.n_categories = n_categories
        self.head = nn.Linear(feature_dim, n_categories + n_continuous)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.trunk(x))
        return out[..., : self.n_categories], out[..., self.n_categories:]


def _dense(width_in: int, width_out: int, batch_norm: bool, activation: nn.Module) -> list:
    layers: list[nn.Module] = [nn.Linear(width_in, width_out)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(width_out))
    return [*layers, activation]


class PaperConvGenerator(nn.Module):
    """InfoGAN's MNIST generator (Chen et al. 2016, appendix C.1): ``(..., L) -> (..., 784)``
    pre-sigmoid; FC ``dense`` BN ReLU, FC ``c2 x 7 x 7`` BN ReLU, deconv ``c1`` 4x4 s2 BN ReLU,
    deconv 1 4x4 s2."""

    def __init__(self, input_dim: int, output_dim: int = 784,
                 channels: tuple[int, int] = (64, 128), dense: int = 1024) -> None:
        super().__init__()
        check_image_dim(output_dim)
        c1, c2 = channels
        self.output_dim = output_dim
        self.net = nn.Sequential(
            *_dense(input_dim, dense, True, nn.ReLU()),
            *_dense(dense, c2 * 7 * 7, True, nn.ReLU()),
            *upsample_to_image(c1, c2),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        return self.net(z.reshape(-1, z.shape[-1])).reshape(*batch, self.output_dim)


class PaperConvDiscriminator(nn.Module):
    """InfoGAN's MNIST discriminator (Chen et al. 2016, appendix C.1): ``(..., 784) -> (...)``
    logits; conv ``c1`` 4x4 s2 lReLU, conv ``c2`` 4x4 s2 BN lReLU, FC ``dense`` BN lReLU
    (:meth:`features`), FC 1."""

    def __init__(self, input_dim: int = 784, channels: tuple[int, int] = (64, 128),
                 dense: int = 1024) -> None:
        super().__init__()
        check_image_dim(input_dim)
        c1, c2 = channels
        self.trunk = nn.Sequential(
            nn.Unflatten(1, IMAGE_SHAPE),
            *downsample_image(c1, c2),
            *_dense(c2 * 7 * 7, dense, True, nn.LeakyReLU(0.2)),
        )
        self.feature_dim = dense
        self.head = nn.Linear(dense, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        return self.trunk(x.reshape(-1, x.shape[-1])).reshape(*batch, self.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(-1)


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
        MLP networks (``hidden``, ``d_hidden``) or the convolutional networks of Chen et al.
        (2016, appendix C.1) for ``1 x 28 x 28`` images (``channels``, ``dense``; module
        docstring).
    q_hidden : sequence of int
        Hidden widths of :math:`Q`: on the discriminator's features when it shares the body
        (the paper: 128; batch norm and leaky ReLU for ``conv``), else on ``x``.
    channels, dense : (int, int), int
        ``conv`` only: the convolutions' feature maps (64, 128) and the dense width (1024).
    share_discriminator : bool
        :math:`Q` is a head on the discriminator's body (the paper), or has its own trunk.
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
        dense: int = 1024,
        share_discriminator: bool = True,
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
        self.dense = check_int(dense, "dense")
        if not isinstance(share_discriminator, bool):
            raise ValueError(f"share_discriminator must be a bool; got {share_discriminator!r}")
        self.share_discriminator = share_discriminator
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
            return PaperConvGenerator(self.input_width, self.data_dim, self.channels, self.dense)
        return MLPDecoder(self.input_width, self.data_dim, self.hidden, self.activation)

    def _make_discriminator(self) -> nn.Module:
        if self.architecture == "conv":
            return PaperConvDiscriminator(self.data_dim, self.channels, self.dense)
        return Discriminator(self.data_dim, self.d_hidden)

    @property
    def feature_dim(self) -> int:
        """Width of the discriminator's last hidden features (what a shared :math:`Q` reads)."""
        if self.architecture == "conv":
            return self.dense
        return self.d_hidden[-1] if self.d_hidden else self.data_dim

    def discriminator_features(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's body at ``x`` ``(B, D) -> (B, F)`` (before its logit head)."""
        if self.architecture == "conv":
            return self.discriminator.features(x)
        return self.discriminator.trunk(x)

    def _make_code_inference(self) -> CodeInference:
        if not self.share_discriminator:
            if self.architecture == "conv":
                body = PaperConvDiscriminator(self.data_dim, self.channels, self.dense)
                return CodeInference(nn.Sequential(body.trunk, *self._q_layers(self.dense)),
                                     self.q_width(), self.n_categories, self.n_continuous)
            mlp = MLPTrunk(self.data_dim, self.q_hidden, self.activation)
            return CodeInference(mlp, mlp.feature_dim, self.n_categories, self.n_continuous)
        return CodeInference(nn.Sequential(*self._q_layers(self.feature_dim)), self.q_width(),
                             self.n_categories, self.n_continuous)

    def q_width(self) -> int:
        """Width of the features :math:`Q`'s output layer reads."""
        if self.q_hidden:
            return self.q_hidden[-1]
        return self.feature_dim

    def _q_layers(self, width: int) -> list[nn.Module]:
        """:math:`Q`'s hidden layers on the discriminator's features (the paper: FC 128, BN,
        leaky ReLU; no batch norm for ``mlp``)."""
        layers: list[nn.Module] = []
        for h in self.q_hidden:
            layers += _dense(width, h, self.architecture == "conv", nn.LeakyReLU(0.2))
            width = h
        return layers

    # ------------------------------------------------------------------ structure
    def config(self) -> dict[str, Any]:
        config = {
            **super().config(),
            "n_categories": self.n_categories,
            "n_continuous": self.n_continuous,
            "architecture": self.architecture,
            "q_hidden": list(self.q_hidden),
            "channels": list(self.channels),
            "dense": self.dense,
            "share_discriminator": self.share_discriminator,
            "info_weight": self.info_weight,
            "continuous_weight": self.continuous_weight,
        }
        # Only the widths of the networks built (the saved weights must bear them out).
        unused = ("channels", "dense") if self.architecture == "mlp" else ("hidden",
                                                                           "d_hidden")
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
        r""":math:`Q`'s logits over the category ``(B, K)`` and means of the codes ``(B, M)``
        (through the discriminator's body when :math:`Q` shares it)."""
        if self.share_discriminator:
            return self.code_inference(self.discriminator_features(x))
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
        logits, means = self.infer_codes(draws.fake)
        log_q = dist.Categorical(logits=logits).log_prob(draws.context["code"]).mean()
        if self.n_continuous:
            style = draws.context["style"]
            log_q = log_q + self.continuous_weight * dist.Normal(means, 1.0).log_prob(
                style).sum(-1).mean()
        return {"information": -self.info_weight * log_q}
