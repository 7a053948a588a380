r"""The generative adversarial network with MLP networks (Goodfellow et al. 2014).

.. math::

    z_n \sim \mathcal N(0, I_L), \qquad x_n = G_\theta(z_n),

an implicit model: :math:`p_g` has no density to evaluate, and :math:`G_\theta` is fitted by a
game against a discriminator :math:`D_\psi(x) \in (0, 1)`,

.. math::

    \min_G \max_D V(D, G) = \mathbb E_{x \sim p_{\text{data}}}[\log D(x)]
        + \mathbb E_{z \sim p(z)}[\log(1 - D(G(z)))].

For a fixed :math:`G` the best discriminator is :math:`D^*(x) = p_{\text{data}}(x) /
(p_{\text{data}}(x) + p_g(x))`, at which :math:`V(D^*, G) = 2\,\mathrm{JSD}(p_{\text{data}}
\| p_g) - \log 4`, minimal (:math:`-\log 4`) exactly when :math:`p_g = p_{\text{data}}`
(Goodfellow et al. 2014, Proposition 1 and Theorem 1). Fitted by
:func:`ppl_models.infer.adversarial.fit_adversarial`.

:class:`DCGAN` is the same model with the convolutional networks of Radford et al. (2016) for
``1 x 28 x 28`` images.

References
----------
Goodfellow, I., Pouget-Abadie, J., Mirza, M., Xu, B., Warde-Farley, D., Ozair, S.,
Courville, A. & Bengio, Y. (2014). Generative adversarial nets. NeurIPS.
Radford, A., Metz, L. & Chintala, S. (2016). Unsupervised representation learning with deep
convolutional generative adversarial networks. ICLR.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_models._shared.checks import check_choice, check_int
from ppl_models.data import check_data, check_features, check_unit_interval
from ppl_models.models.adversarial import (
    ConvDiscriminator,
    ConvGenerator,
    Discriminator,
    observation_plate,
)
from ppl_models.models.protocols import AdversarialDraws, AdversarialModel, LatentModel
from ppl_models.nn import MLPDecoder

__all__ = ["DCGAN", "GAN", "OUTPUTS"]

#: What the generator's last layer maps to: ``real`` (identity) or ``unit`` (a sigmoid, for
#: pixel intensities in [0, 1]).
OUTPUTS: tuple[str, ...] = ("real", "unit")


class GAN(nn.Module, LatentModel, AdversarialModel):
    r"""Generative adversarial network with MLP generator and discriminator.

    .. math::

        z_n \sim \mathcal N(0, I_L), \qquad x_n = G_\theta(z_n), \qquad
        D_\psi(x) = \sigma(\ell_\psi(x))

    :meth:`model` is the Pyro model (``z`` in the plate ``"data"``, ``x`` a ``Delta`` at
    :math:`G(z)`): it simulates (``x=None``) and names the sites, but its density is
    degenerate, so the model is fitted adversarially, not by an ELBO.

    Parameters
    ----------
    data_dim : int
        D, features per observation.
    latent_dim : int
        L, size of the noise z.
    hidden : sequence of int
        Hidden widths of the generator (read from the data side, as a decoder's);
        ``()`` makes it affine: :math:`x = A z + b`, so :math:`p_g = \mathcal N(b, A A^\top)`.
    d_hidden : sequence of int
        Hidden widths of the discriminator (leaky ReLU).
    activation : str
        The generator's hidden nonlinearity (:data:`ppl_models.nn.ACTIVATIONS`).
    output : {"real", "unit"}
        ``unit`` squashes the generator's output into (0, 1) by a sigmoid (images).
    """

    local_plate: ClassVar[str] = "data"
    local_sites: ClassVar[tuple[str, ...]] = ("z",)
    enumerated_sites: ClassVar[tuple[str, ...]] = ()
    max_plate_nesting: ClassVar[int] = 1
    observed_site: ClassVar[str] = "x"
    name: ClassVar[str] = "gan"
    adversarial_weight: float = 1.0

    def __init__(
        self,
        data_dim: int,
        latent_dim: int = 2,
        *,
        hidden: Sequence[int] | int = (64,),
        d_hidden: Sequence[int] | int = (64,),
        activation: str = "relu",
        output: str = "real",
    ) -> None:
        super().__init__()
        self.data_dim = check_int(data_dim, "data_dim")
        self.latent_dim = check_int(latent_dim, "latent_dim")
        self.hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        self.d_hidden = (d_hidden,) if isinstance(d_hidden, int) else tuple(d_hidden)
        self.activation = activation
        self.output = check_choice(output, "output", OUTPUTS)
        self.generator = self._make_generator()
        self.discriminator = self._make_discriminator()
        self.register_buffer("prior_loc", torch.zeros(self.latent_dim))
        self.register_buffer("prior_scale", torch.ones(self.latent_dim))

    def _make_generator(self) -> nn.Module:
        return MLPDecoder(self.latent_dim, self.data_dim, self.hidden, self.activation)

    def _make_discriminator(self) -> nn.Module:
        return Discriminator(self.data_dim, self.d_hidden)

    # ------------------------------------------------------------------ structure
    @property
    def priors(self) -> dict:
        """None: the noise prior is fixed at :math:`\\mathcal N(0, I)`."""
        return {}

    def config(self) -> dict[str, Any]:
        return {
            "data_dim": self.data_dim,
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "d_hidden": list(self.d_hidden),
            "activation": self.activation,
            "output": self.output,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], priors: dict[str, Any] | None = None) -> GAN:
        """The model :meth:`config` describes (networks freshly initialised)."""
        return cls(**config)

    def dims(self) -> dict[str, list[str]]:
        return {"z": ["obs", "latent"], self.observed_site: ["obs", "feature"]}

    @property
    def dtype(self) -> torch.dtype:
        return self.prior_loc.dtype

    def validate(self, data: Any) -> torch.Tensor:
        """``(N, D)`` data with ``D = data_dim`` (in [0, 1] for ``output="unit"``)."""
        data = check_data(data)
        check_features(data, self.data_dim, what=f"the {type(self).__name__} generates")
        if self.output == "unit":
            check_unit_interval(data, needed_by="output='unit'", alternative="output='real'")
        return data.to(self.dtype)

    # ------------------------------------------------------------------ generative model
    def prior_distribution(self) -> dist.Distribution:
        r""":math:`p(z) = \mathcal N(0, I_L)`."""
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`G_\theta(z)`, ``(..., D)``."""
        out = self.generator(z)
        return torch.sigmoid(out) if self.output == "unit" else out

    def model(
        self,
        x: torch.Tensor | None = None,
        *,
        n_obs: int | None = None,
        subsample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""``z ~ N(0, I)``, ``x = G(z)`` (a ``Delta`` site) in the plate ``"data"``."""
        pyro.module("generator", self.generator)
        with observation_plate(self.local_plate, x, n_obs, subsample):
            z = pyro.sample("z", self.prior_distribution())
            return pyro.sample(self.observed_site, dist.Delta(self.transform(z), event_dim=1),
                               obs=x)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(*args, **kwargs)

    def generate(self, num_samples: int) -> torch.Tensor:
        """``(num_samples, D)`` draws :math:`G(z)`, :math:`z \\sim p(z)`."""
        with torch.no_grad():
            return self.transform(self.prior_distribution().sample((num_samples,)))

    # ------------------------------------------------------------------ the game
    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def adversarial_draws(self, x: torch.Tensor) -> AdversarialDraws:
        """Real: the batch; fake: :math:`G(z)` for as many fresh :math:`z`."""
        z = self.prior_distribution().sample((x.shape[0],))
        return AdversarialDraws(real=x, fake=self.transform(z), context={})

    def discriminate(self, samples: torch.Tensor) -> torch.Tensor:
        r"""Logits :math:`\ell_\psi(x)` of :math:`D_\psi(x) = \sigma(\ell_\psi(x))`."""
        return self.discriminator(samples)

    def generator_terms(self, x: torch.Tensor, draws: AdversarialDraws) -> dict[str, torch.Tensor]:
        """None: the generator plays the game alone."""
        return {}


class DCGAN(GAN):
    r"""Deep convolutional GAN for ``1 x 28 x 28`` images (Radford et al. 2016).

    The model of :class:`GAN` (:math:`z \sim \mathcal N(0, I_L)`, :math:`x = G(z)`) with the
    paper's architecture guidelines: strided (transposed) convolutions instead of pooling,
    batch normalisation in both networks, ReLU in the generator, leaky ReLU in the
    discriminator (:class:`~ppl_models.models.adversarial.ConvGenerator`,
    :class:`~ppl_models.models.adversarial.ConvDiscriminator`); the generator's output is
    squashed into (0, 1) by a sigmoid for intensities (the paper's tanh for [-1, 1]). Train it
    with ``fit_adversarial(..., lr=2e-4, betas=(0.5, 0.999))``, the paper's Adam settings.
    Batch normalisation keeps running statistics (in ``state_dict``, so checkpoints carry
    them); :meth:`generate` uses the networks in their current mode.

    Parameters
    ----------
    latent_dim : int
        L, size of the noise (the paper: 100).
    channels : tuple of int
        Feature maps of the two convolutional layers (generator: 14x14 then 28x28 in reverse;
        discriminator: 14x14, 7x7).
    output : {"unit", "real"}
    """

    name: ClassVar[str] = "dcgan"

    def __init__(self, latent_dim: int = 100, *, channels: Sequence[int] = (64, 128),
                 output: str = "unit") -> None:
        channels = tuple(check_int(c, f"channels[{i}]") for i, c in enumerate(channels))
        if len(channels) != 2:
            raise ValueError(f"channels must hold 2 widths; got {list(channels)}")
        self.channels: tuple[int, int] = (channels[0], channels[1])
        super().__init__(784, latent_dim, hidden=(), d_hidden=(), output=output)

    def _make_generator(self) -> nn.Module:
        return ConvGenerator(self.latent_dim, self.data_dim, self.channels)

    def _make_discriminator(self) -> nn.Module:
        return ConvDiscriminator(self.data_dim, self.channels)

    def config(self) -> dict[str, Any]:
        return {"latent_dim": self.latent_dim, "channels": list(self.channels),
                "output": self.output}
