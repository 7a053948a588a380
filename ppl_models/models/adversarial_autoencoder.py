r"""Autoencoders whose codes are matched to a prior by a discriminator or by an MMD penalty.

**Adversarial autoencoder** (Makhzani et al. 2016). An encoder, deterministic
:math:`z = E_\phi(x)` or Gaussian :math:`q_\phi(z \mid x) = \mathcal N(\mu_\phi(x),
\mathrm{diag}\,\sigma^2_\phi(x))` sampled by reparameterisation :math:`z = \mu_\phi(x) +
\sigma_\phi(x) \odot \epsilon` (their section 2, the second of the three choices of
:math:`q(z \mid x)`), a decoder :math:`\hat x = G_\theta(z)`, and a discriminator
:math:`D_\psi(z)` on the code space that tells draws of the prior :math:`p(z)` ("real") from
codes of the data ("fake", the aggregated posterior :math:`q(z) = \mathbb E_{p_{\text{data}}}
[q(z \mid x)]`, :math:`q(z \mid x) = \delta_{E(x)}` for the deterministic encoder). The
autoencoder minimises

.. math::

    \mathbb E_x\, c(x, G(E(x))) + \lambda\, \mathbb E_x[-\log D(E(x))]

(reconstruction and regularisation phases taken in one generator update), the discriminator
:math:`-\mathbb E_{z \sim p}\log D(z) - \mathbb E_x \log(1 - D(E(x)))`, which drives
:math:`q(z)` to :math:`p(z)` in Jensen-Shannon divergence. Only draws of the prior are needed,
never its density: a mixture of Gaussians, a uniform, a ring or any distribution with
``sample`` shapes the codes (Makhzani et al. 2016, section 2 and figure 2).

**Wasserstein autoencoder** (Tolstikhin et al. 2018). The same autoencoder minimises
:math:`\mathbb E_x\, c(x, G(E(x))) + \lambda\, \mathcal D_Z(q(z), p(z))`, an upper bound on
the optimal-transport cost :math:`W_c(p_{\text{data}}, p_G)` for deterministic decoders
(their Theorem 1), with :math:`c(x, y) = \|x - y\|^2` and the divergence either

* ``penalty="gan"``: the adversarial one above (WAE-GAN; the AAE is its special case), or
* ``penalty="mmd"``: :math:`\widehat{\mathrm{MMD}}^2_u` with the inverse multiquadratic
  kernel (:func:`ppl_models.models.adversarial.mmd_unbiased`), no discriminator (WAE-MMD).

Both are fitted by :func:`ppl_models.infer.adversarial.fit_adversarial`.

References
----------
Makhzani, A., Shlens, J., Jaitly, N., Goodfellow, I. & Frey, B. (2016). Adversarial
autoencoders. ICLR workshop (arXiv:1511.05644).
Tolstikhin, I., Bousquet, O., Gelly, S. & Schölkopf, B. (2018). Wasserstein auto-encoders.
ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from ppl_models._shared.checks import check_choice, check_float, check_int
from ppl_models.data import check_data, check_features, check_unit_interval
from ppl_models.models.adversarial import (
    KERNELS,
    Discriminator,
    check_sampled_prior,
    mmd_unbiased,
    observation_plate,
)
from ppl_models.models.protocols import AdversarialDraws, AdversarialModel, LatentModel
from ppl_models.nn import GaussianEncoder, MLPDecoder, MLPTrunk

__all__ = ["ENCODERS", "RECONSTRUCTIONS", "AdversarialAutoencoder", "WassersteinAutoencoder"]

#: The encoders :math:`q(z \mid x)` of the autoencoders: a point mass at :math:`E_\phi(x)`, or
#: a diagonal Gaussian sampled by reparameterisation (Makhzani et al. 2016, section 2).
ENCODERS: tuple[str, ...] = ("deterministic", "gaussian")


def _squared(eta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x - eta).pow(2).sum(-1)


def _cross_entropy(eta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(eta, x, reduction="none").sum(-1)


#: Reconstruction costs :math:`c(x, \hat x)` by name: name -> (cost of the decoder's output
#: ``eta`` against ``x`` per observation, the observation density whose negative log is the cost
#: up to a constant). ``squared``: :math:`\|x - \eta\|^2`, i.e.
#: :math:`\mathcal N(\eta, \tfrac12 I)`; ``cross_entropy``: the Bernoulli cross-entropy of
#: intensities in [0, 1] against logits :math:`\eta` (the continuous Bernoulli without its
#: normaliser).
RECONSTRUCTIONS: dict[str, tuple[Callable, Callable]] = {
    "squared": (_squared, lambda eta: dist.Normal(eta, math.sqrt(0.5)).to_event(1)),
    "cross_entropy": (_cross_entropy, lambda eta: dist.ContinuousBernoulli(logits=eta).to_event(1)),
}


class _DeterministicEncoder(nn.Module):
    """``x (..., D) -> z (..., L)``: an MLP trunk and a linear head."""

    def __init__(self, input_dim: int, latent_dim: int, hidden: tuple[int, ...],
                 activation: str) -> None:
        super().__init__()
        self.trunk = MLPTrunk(input_dim, hidden, activation)
        self.head = nn.Linear(self.trunk.feature_dim, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class AdversarialAutoencoder(nn.Module, LatentModel, AdversarialModel):
    r"""Adversarial autoencoder with any prior one can sample (Makhzani et al. 2016).

    .. math::

        z_n \sim p(z), \quad x_n \mid z_n \sim f(x \mid G_\theta(z_n)); \qquad
        \text{encoder } z \sim q_\phi(z \mid x), \quad \text{discriminator } D_\psi(z)

    where :math:`-\log f(x \mid \eta) = c(x, \eta) + \text{const}`
    (:data:`RECONSTRUCTIONS`). The generator's loss is
    :math:`\mathbb E_x \mathbb E_{q(z \mid x)}[c(x, G(z)) + \lambda\, L_{\text{adv}}(D(z))]`
    (module docstring), one draw of :math:`z` per observation and step.

    Parameters
    ----------
    input_dim : int
        D, features per observation.
    latent_dim : int
        L, size of the code.
    prior : distribution, optional
        Any Pyro (or torch) distribution with ``sample`` and event shape ``(L,)`` (or batch
        shape ``(L,)``, then taken as independent coordinates): e.g. a
        ``MixtureSameFamily`` of Gaussians, ``Uniform(-ones(L), ones(L))``, a user's own.
        Default :math:`\mathcal N(0, I_L)`.
    reconstruction : {"squared", "cross_entropy"}
        The cost :math:`c` (``cross_entropy`` for intensities in [0, 1]).
    hidden : sequence of int
        Hidden widths of the encoder (the decoder mirrors them).
    d_hidden : sequence of int
        Hidden widths of the code discriminator (leaky ReLU).
    activation : str
    adversarial_weight : float
        :math:`\lambda`, the weight of the generator's adversarial loss.
    encoder : {"deterministic", "gaussian"}
        :math:`q(z \mid x)`: :math:`\delta_{E_\phi(x)}`, or
        :math:`\mathcal N(\mu_\phi(x), \mathrm{diag}\,\sigma_\phi^2(x))` with
        :math:`\sigma = \mathrm{softplus}(\cdot) + 10^{-4}`
        (:class:`ppl_models.nn.GaussianEncoder`); the discriminator and the decoder see one
        reparameterised draw (:meth:`sample_codes`), :meth:`encode` gives the mean.
    """

    local_plate: ClassVar[str] = "data"
    local_sites: ClassVar[tuple[str, ...]] = ("z",)
    enumerated_sites: ClassVar[tuple[str, ...]] = ()
    max_plate_nesting: ClassVar[int] = 1
    observed_site: ClassVar[str] = "x"
    name: ClassVar[str] = "aae"

    def __init__(
        self,
        input_dim: int,
        latent_dim: int = 2,
        *,
        prior: torch.distributions.Distribution | None = None,
        reconstruction: str = "squared",
        hidden: Sequence[int] | int = (256,),
        d_hidden: Sequence[int] | int = (64,),
        activation: str = "relu",
        adversarial_weight: float = 1.0,
        encoder: str = "deterministic",
    ) -> None:
        super().__init__()
        self.encoder_kind = check_choice(encoder, "encoder", ENCODERS)
        self.input_dim = check_int(input_dim, "input_dim")
        self.latent_dim = check_int(latent_dim, "latent_dim")
        self.reconstruction = check_choice(reconstruction, "reconstruction", RECONSTRUCTIONS)
        self.hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        self.d_hidden = (d_hidden,) if isinstance(d_hidden, int) else tuple(d_hidden)
        self.activation = activation
        self.adversarial_weight = check_float(adversarial_weight, "adversarial_weight",
                                              minimum=0)
        self.user_prior = prior is not None
        if prior is None:
            prior = dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1)
        self.prior = check_sampled_prior(prior, self.latent_dim)
        self.encoder = self._make_encoder()
        self.decoder = MLPDecoder(self.code_dim, self.input_dim, self.hidden, activation)
        self.discriminator: nn.Module | None = self._make_discriminator()

    @property
    def code_dim(self) -> int:
        """Width of what the decoder takes (L here)."""
        return self.latent_dim

    def _make_encoder(self) -> nn.Module:
        if self.encoder_kind == "gaussian":
            return GaussianEncoder(MLPTrunk(self.input_dim, self.hidden, self.activation),
                                   self.latent_dim)
        return _DeterministicEncoder(self.input_dim, self.latent_dim, self.hidden,
                                     self.activation)

    def _make_discriminator(self) -> nn.Module | None:
        return Discriminator(self.latent_dim, self.d_hidden)

    # ------------------------------------------------------------------ structure
    @property
    def priors(self) -> dict:
        """The user's prior over ``z`` (empty for the default standard normal)."""
        return {"z": self.prior} if self.user_prior else {}

    def config(self) -> dict[str, Any]:
        """JSON-ready constructor arguments (the prior is in :attr:`priors`)."""
        return {
            "input_dim": self.input_dim,
            "latent_dim": self.latent_dim,
            "reconstruction": self.reconstruction,
            "hidden": list(self.hidden),
            "d_hidden": list(self.d_hidden),
            "activation": self.activation,
            "adversarial_weight": self.adversarial_weight,
            "encoder": self.encoder_kind,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any],
                    priors: dict[str, Any] | None = None) -> AdversarialAutoencoder:
        """The model :meth:`config` describes, with the saved prior ``priors["z"]`` if any."""
        return cls(**config, prior=(priors or {}).get("z"))

    def dims(self) -> dict[str, list[str]]:
        return {"z": ["obs", "latent"], self.observed_site: ["obs", "feature"]}

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def validate(self, data: Any) -> torch.Tensor:
        """``(N, D)`` data (in [0, 1] for ``reconstruction="cross_entropy"``)."""
        data = check_data(data)
        check_features(data, self.input_dim, what="the model takes",
                       hint="images must be flattened")
        if self.reconstruction == "cross_entropy":
            check_unit_interval(data, needed_by="reconstruction='cross_entropy'",
                                alternative="reconstruction='squared'")
        return data.to(self.dtype)

    # ------------------------------------------------------------------ networks
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        r"""The code :math:`E_\phi(x)` (deterministic encoder) or the mean
        :math:`\mu_\phi(x)` of :math:`q(z \mid x)` (Gaussian), ``(..., L)``."""
        if self.encoder_kind == "gaussian":
            return self.encoder(x)[0]
        return self.encoder(x)

    def code_distribution(self, x: torch.Tensor) -> dist.Distribution:
        r""":math:`q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \mathrm{diag}\,
        \sigma^2_\phi(x))`, event shape ``(L,)`` (Gaussian encoder only)."""
        if self.encoder_kind != "gaussian":
            raise ValueError("code_distribution needs encoder='gaussian'; this encoder is "
                             "deterministic (its codes are encode(x))")
        loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)

    def sample_codes(self, x: torch.Tensor) -> torch.Tensor:
        r"""One draw :math:`z \sim q_\phi(z \mid x)` per row, differentiable in
        :math:`\phi` (:math:`\mu + \sigma \odot \epsilon`, :math:`\epsilon` from the global
        RNG); :math:`E_\phi(x)` for the deterministic encoder."""
        if self.encoder_kind == "gaussian":
            return self.code_distribution(x).rsample()
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        r"""The reconstruction's mean: :math:`G_\theta(z)` (squared cost) or its sigmoid
        (cross-entropy), ``(..., D)``."""
        eta = self.decoder(z)
        return torch.sigmoid(eta) if self.reconstruction == "cross_entropy" else eta

    def reconstruction_cost(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        r""":math:`c(x, G(z))` per observation, ``(B,)``."""
        return RECONSTRUCTIONS[self.reconstruction][0](self.decoder(z), x)

    # ------------------------------------------------------------------ Pyro model
    def model(
        self,
        x: torch.Tensor | None = None,
        *,
        n_obs: int | None = None,
        subsample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""``z ~ p(z)``, ``x ~ f(x | G(z))`` in the plate ``"data"``; simulates when
        ``x=None``."""
        pyro.module("decoder", self.decoder)
        density = RECONSTRUCTIONS[self.reconstruction][1]
        with observation_plate(self.local_plate, x, n_obs, subsample):
            z = pyro.sample("z", self.prior)
            return pyro.sample(self.observed_site, density(self.decoder(z)), obs=x)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(*args, **kwargs)

    def generate(self, num_samples: int) -> torch.Tensor:
        """``(num_samples, D)`` decoded prior draws :meth:`decode` (:math:`z \\sim p(z)`)."""
        with torch.no_grad():
            return self.decode(self.prior.sample((num_samples,)).to(self.dtype))

    # ------------------------------------------------------------------ the game
    def generator_parameters(self) -> list[nn.Parameter]:
        """The encoder's and the decoder's."""
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [] if self.discriminator is None else list(self.discriminator.parameters())

    def adversarial_draws(self, x: torch.Tensor) -> AdversarialDraws:
        """Real: as many draws of the prior as rows; fake: the batch's codes
        (:meth:`sample_codes`)."""
        real = self.prior.sample((x.shape[0],)).to(x.dtype)
        return AdversarialDraws(real=real, fake=self.sample_codes(x), context={})

    def discriminate(self, samples: torch.Tensor) -> torch.Tensor:
        if self.discriminator is None:
            raise ValueError(f"{type(self).__name__} with this penalty has no discriminator")
        return self.discriminator(samples)

    def generator_terms(self, x: torch.Tensor, draws: AdversarialDraws) -> dict[str, torch.Tensor]:
        r"""``reconstruction``: :math:`\frac1B \sum_i c(x_i, G(z_i))`, :math:`z_i` the fake
        draws."""
        return {"reconstruction": self.reconstruction_cost(x, draws.fake).mean()}


#: Penalties of the Wasserstein autoencoder.
PENALTIES: tuple[str, ...] = ("mmd", "gan")


class WassersteinAutoencoder(AdversarialAutoencoder):
    r"""Wasserstein autoencoder (Tolstikhin et al. 2018), WAE-MMD or WAE-GAN.

    Minimises :math:`\mathbb E_x \|x - G(E(x))\|^2 + \lambda\, \mathcal D_Z(q(z), p(z))`
    (module docstring). With ``penalty="mmd"`` the generator's terms are ``reconstruction``
    and ``penalty`` :math:`= \lambda\, \widehat{\mathrm{MMD}}^2_u(E(x_{1:B}), z_{1:B})` with
    :math:`z_i \sim p(z)`, and there is no discriminator; with ``penalty="gan"`` it is the
    adversarial autoencoder with weight :math:`\lambda`.

    Parameters
    ----------
    penalty : {"mmd", "gan"}
    weight : float, optional
        :math:`\lambda`; default 10 (MMD) or 1 (GAN), the paper's MNIST values.
    kernel : {"imq", "gaussian"}
        The MMD's kernel (:data:`ppl_models.models.adversarial.KERNELS`).
    kernel_scale : float, optional
        IMQ: the base scale :math:`C = 2 L \sigma_z^2` (default from the prior's variance,
        averaged over coordinates); Gaussian: the bandwidth (default 1).
    input_dim, latent_dim, prior, reconstruction, hidden, d_hidden, activation, encoder
        As for :class:`AdversarialAutoencoder` (``reconstruction`` defaults to the paper's
        squared distance).
    """

    name: ClassVar[str] = "wae"

    def __init__(
        self,
        input_dim: int,
        latent_dim: int = 2,
        *,
        penalty: str = "mmd",
        weight: float | None = None,
        kernel: str = "imq",
        kernel_scale: float | None = None,
        prior: torch.distributions.Distribution | None = None,
        reconstruction: str = "squared",
        hidden: Sequence[int] | int = (256,),
        d_hidden: Sequence[int] | int = (64,),
        activation: str = "relu",
        encoder: str = "deterministic",
    ) -> None:
        self.penalty = check_choice(penalty, "penalty", PENALTIES)
        self.kernel = check_choice(kernel, "kernel", KERNELS)
        if weight is None:
            weight = 10.0 if penalty == "mmd" else 1.0
        self.weight = check_float(weight, "weight", minimum=0)
        super().__init__(
            input_dim, latent_dim, prior=prior, reconstruction=reconstruction, hidden=hidden,
            d_hidden=d_hidden, activation=activation,
            adversarial_weight=self.weight if penalty == "gan" else 1.0, encoder=encoder,
        )
        if kernel_scale is None:
            kernel_scale = self._default_kernel_scale()
        self.kernel_scale = check_float(kernel_scale, "kernel_scale", minimum=0,
                                        strict_minimum=True)
        self.kernel_fn = KERNELS[self.kernel](self.kernel_scale)

    def _make_discriminator(self) -> nn.Module | None:
        return Discriminator(self.latent_dim, self.d_hidden) if self.penalty == "gan" else None

    def _default_kernel_scale(self) -> float:
        if self.kernel == "gaussian":
            return 1.0
        try:
            variance = float(self.prior.variance.mean())
        except NotImplementedError:
            raise ValueError(
                "kernel_scale: this prior has no variance to set the IMQ scale 2 L sigma_z^2 "
                "from; pass kernel_scale"
            ) from None
        return 2.0 * self.latent_dim * variance

    def config(self) -> dict[str, Any]:
        config = super().config()
        del config["adversarial_weight"]
        config.update(penalty=self.penalty, weight=self.weight, kernel=self.kernel,
                      kernel_scale=self.kernel_scale)
        if self.penalty == "mmd":  # no discriminator: its widths describe nothing saved
            del config["d_hidden"]
        return config

    def generator_terms(self, x: torch.Tensor, draws: AdversarialDraws) -> dict[str, torch.Tensor]:
        r"""``reconstruction`` and, for ``penalty="mmd"``, ``penalty``
        :math:`= \lambda\, \widehat{\mathrm{MMD}}^2_u` between the codes and the prior draws."""
        terms = super().generator_terms(x, draws)
        if self.penalty == "mmd":
            terms["penalty"] = self.weight * mmd_unbiased(draws.fake, draws.real, self.kernel_fn)
        return terms
