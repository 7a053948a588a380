r"""The variational autoencoder: a deep latent-variable model with its amortized guide.

.. math::

    z_n \sim p_\lambda(z), \qquad x_n \mid z_n \sim p_\theta(x \mid z_n) =
        \prod_{d=1}^{D} f(x_{nd} \mid \eta_d(z_n)), \qquad
    q_\phi(z_n \mid x_n) = \mathcal N\big(\mu_\phi(x_n), \mathrm{diag}\,\sigma^2_\phi(x_n)\big),

with a decoder network :math:`\eta_\theta` giving each pixel's natural parameter, an encoder
network :math:`(\mu_\phi, \sigma_\phi)` and a prior :math:`p_\lambda(z)` that is
:math:`\mathcal N(0, I)` unless replaced (a learnable mixture of Gaussians or the VampPrior in
:mod:`ppl_models.models.mixture_vae`, or any Pyro distribution of event shape ``(L,)``).
Training maximises the evidence lower bound

.. math::

    \mathcal L(x) = \mathbb E_{q_\phi(z \mid x)}[\log p_\theta(x \mid z)]
        - \mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p_\lambda(z)\big) \le \log p(x)

with reparameterised gradients (Kingma & Welling 2014; Rezende et al. 2014). The likelihoods
:math:`f` are a registry (:data:`LIKELIHOODS`): ``bernoulli`` (binary pixels),
``continuous_bernoulli`` (intensities in [0, 1], with its normalising constant; Loaiza-Ganem
& Cunningham 2019) and ``gaussian`` (real data; a fixed or learned scale, which with linear
networks and ``hidden=()`` is probabilistic PCA, Tipping & Bishop 1999).

References
----------
Kingma, D. P. & Welling, M. (2014). Auto-encoding variational Bayes. ICLR.
Rezende, D. J., Mohamed, S. & Wierstra, D. (2014). Stochastic backpropagation and approximate
inference in deep generative models. ICML.
Loaiza-Ganem, G. & Cunningham, J. P. (2019). The continuous Bernoulli: fixing a pervasive
error in variational autoencoders. NeurIPS.
Tipping, M. E. & Bishop, C. M. (1999). Probabilistic principal component analysis. JRSS B.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints, kl_divergence

from ppl_models._shared.checks import check_float, check_int
from ppl_models.data import check_data, check_features
from ppl_models.models.protocols import AmortizedModel, LatentModel
from ppl_models.nn import make_decoder, make_encoder

__all__ = [
    "LATENT_PRIORS",
    "LIKELIHOODS",
    "VAE",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "DistributionPrior",
    "GaussianLikelihood",
    "LatentPrior",
    "Likelihood",
    "StandardNormalPrior",
]


# ---------------------------------------------------------------------------- likelihoods
class Likelihood(nn.Module, ABC):
    r"""A factorised pixel likelihood :math:`p(x \mid z) = \prod_d f(x_d \mid \eta_d)`.

    Called on the decoder's output ``eta`` (``(..., D)``), it returns a Pyro distribution of
    event shape ``(D,)``. ``domain`` says what the data (and VampPrior pseudo-inputs) live in.
    """

    name: ClassVar[str] = "likelihood"
    domain: ClassVar[str] = "real"

    def __init__(self, output_dim: int, scale: float | None = None) -> None:
        super().__init__()
        if scale is not None:
            raise ValueError(f"likelihood '{self.name}' takes no obs_scale; got {scale!r}")
        self.output_dim = output_dim

    @abstractmethod
    def forward(self, eta: torch.Tensor) -> dist.Distribution:
        """The distribution of an observation given the decoder's output ``eta``."""

    def validate(self, x: torch.Tensor) -> None:
        """Refuse data outside the likelihood's support, naming the fix."""


class BernoulliLikelihood(Likelihood):
    r"""Binary pixels: :math:`f(x_d \mid \eta_d) = \mathrm{Bernoulli}(x_d; \sigma(\eta_d))`."""

    name = "bernoulli"
    domain = "unit"

    def forward(self, eta: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=eta).to_event(1)

    def validate(self, x: torch.Tensor) -> None:
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            example = float(x[bad][0])
            raise ValueError(
                f"likelihood='bernoulli' needs binary pixels (0 or 1); these data hold "
                f"{int(bad.sum())} other values (e.g. {example:.4g}). Binarize them "
                "(load_images(..., binarize='threshold'), or fit_svi(..., binarize='dynamic') "
                "to draw binary pixels afresh for each batch) or use "
                "likelihood='continuous_bernoulli' for intensities in [0, 1]"
            )


class ContinuousBernoulliLikelihood(Likelihood):
    r"""Intensities in [0, 1] with the continuous Bernoulli's normaliser.

    :math:`f(x_d \mid \lambda_d) = C(\lambda_d)\, \lambda_d^{x_d} (1 - \lambda_d)^{1 - x_d}`,
    :math:`\lambda_d = \sigma(\eta_d)` (Loaiza-Ganem & Cunningham 2019).
    """

    name = "continuous_bernoulli"
    domain = "unit"

    def forward(self, eta: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=eta).to_event(1)

    def validate(self, x: torch.Tensor) -> None:
        if bool(((x < 0) | (x > 1)).any()):
            raise ValueError(
                "likelihood='continuous_bernoulli' needs pixel intensities in [0, 1]; got "
                f"values in [{float(x.min()):.4g}, {float(x.max()):.4g}] (rescale them, e.g. "
                "divide 8-bit pixels by 255, or use likelihood='gaussian')"
            )


class GaussianLikelihood(Likelihood):
    r"""Real data: :math:`f(x_d \mid \eta_d) = \mathcal N(x_d; \eta_d, s^2)`.

    ``scale=None`` learns one scale :math:`s` shared by every coordinate (started at 1);
    a float fixes it.
    """

    name = "gaussian"

    def __init__(self, output_dim: int, scale: float | None = None) -> None:
        nn.Module.__init__(self)
        self.output_dim = output_dim
        self.log_scale: nn.Parameter | None = None
        if scale is None:
            self.log_scale = nn.Parameter(torch.zeros(()))
        else:
            scale = check_float(scale, "obs_scale", minimum=0, strict_minimum=True)
            self.register_buffer("fixed_scale", torch.tensor(scale))

    @property
    def scale(self) -> torch.Tensor:
        if isinstance(self.log_scale, nn.Parameter):
            return self.log_scale.exp()
        return self.fixed_scale

    def forward(self, eta: torch.Tensor) -> dist.Distribution:
        return dist.Normal(eta, self.scale.to(eta.dtype)).to_event(1)


#: Registry of pixel likelihoods: name -> class(output_dim, scale).
LIKELIHOODS: dict[str, type[Likelihood]] = {
    BernoulliLikelihood.name: BernoulliLikelihood,
    ContinuousBernoulliLikelihood.name: ContinuousBernoulliLikelihood,
    GaussianLikelihood.name: GaussianLikelihood,
}


# ---------------------------------------------------------------------------- priors
class LatentPrior(nn.Module, ABC):
    r"""A prior :math:`p_\lambda(z)` over the latent code, possibly with learned parameters.

    Subclasses create their parameters in :meth:`build` (called by the model once the
    latent and data dimensions are known) and return the distribution (event shape
    ``(L,)``, batch shape ``()``) from :meth:`distribution`, which receives the model so that
    a prior may use its encoder (the VampPrior).
    """

    name: ClassVar[str] = "prior"
    #: Whether :meth:`distribution` runs the model's encoder (its parameters are then
    #: generative parameters too).
    uses_encoder: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.latent_dim: int | None = None

    def build(self, latent_dim: int, input_dim: int, domain: str) -> None:
        """Create the parameters for codes of size ``latent_dim`` (once)."""
        if self.latent_dim is not None and self.latent_dim != latent_dim:
            raise ValueError(
                f"this {type(self).__name__} was built for latent_dim {self.latent_dim}; "
                f"got {latent_dim} (make a new prior for each model)"
            )
        self.latent_dim = latent_dim

    @abstractmethod
    def distribution(self, vae: Any) -> dist.Distribution:
        """The prior :math:`p(z)` as a distribution with event shape ``(latent_dim,)``."""

    def config(self) -> dict:
        """JSON-ready description."""
        return {"name": self.name}


class StandardNormalPrior(LatentPrior):
    r""":math:`p(z) = \mathcal N(0, I_L)`, the default (Kingma & Welling 2014)."""

    name = "standard"

    def build(self, latent_dim: int, input_dim: int, domain: str) -> None:
        super().build(latent_dim, input_dim, domain)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def distribution(self, vae: Any) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class DistributionPrior(LatentPrior):
    """A user's fixed Pyro distribution of event shape ``(L,)`` on the reals."""

    name = "distribution"

    def __init__(self, distribution: dist.Distribution) -> None:
        super().__init__()
        if not isinstance(distribution, torch.distributions.Distribution):
            raise ValueError(f"expected a Pyro distribution as prior; got {distribution!r}")
        self.fixed = distribution

    def build(self, latent_dim: int, input_dim: int, domain: str) -> None:
        d = self.fixed
        if d.batch_shape != () or d.event_shape != (latent_dim,):
            raise ValueError(
                f"a prior over z needs batch shape () and event shape ({latent_dim},); got "
                f"batch {tuple(d.batch_shape)}, event {tuple(d.event_shape)} (use "
                ".to_event(1) on a batch of univariate distributions)"
            )
        if d.support is not constraints.real_vector and not (
            isinstance(d.support, constraints.independent)
            and d.support.base_constraint is constraints.real
        ):
            raise ValueError(f"a prior over z must have real support; got {d.support}")
        super().build(latent_dim, input_dim, domain)

    def distribution(self, vae: Any) -> dist.Distribution:
        return self.fixed

    def config(self) -> dict:
        return {"name": self.name, "distribution": type(self.fixed).__name__}


#: Registry of latent priors by name: name -> class (built with its defaults).
#: :mod:`ppl_models.models.mixture_vae` adds ``"mog"`` and ``"vamp"`` when imported
#: (as :mod:`ppl_models.models` does).
LATENT_PRIORS: dict[str, Callable[[], LatentPrior]] = {"standard": StandardNormalPrior}


def _resolve_prior(prior: str | LatentPrior | dist.Distribution | None) -> LatentPrior:
    if prior is None:
        return StandardNormalPrior()
    if isinstance(prior, LatentPrior):
        return prior
    if isinstance(prior, str):
        builder = LATENT_PRIORS.get(prior)
        if builder is None:
            raise ValueError(
                f"unknown prior {prior!r}; choose one of {sorted(LATENT_PRIORS)}, a "
                "LatentPrior, or a Pyro distribution of event shape (latent_dim,)"
            )
        return builder()
    return DistributionPrior(prior)


# ---------------------------------------------------------------------------- the model
class VAE(nn.Module, LatentModel, AmortizedModel):
    r"""Variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014).

    .. math::

        z_n \sim p_\lambda(z), \quad x_n \mid z_n \sim \prod_d f(x_{nd} \mid
            \eta_\theta(z_n)_d), \qquad q_\phi(z_n \mid x_n) =
            \mathcal N(\mu_\phi(x_n), \mathrm{diag}\, \sigma_\phi^2(x_n))

    The object holds the structure and the networks (:mod:`ppl_models.nn`); :meth:`model` and
    :meth:`guide` are plain Pyro and register the networks with ``pyro.module``. Both take the
    batch ``x`` and, for minibatches, ``n_obs`` (the full data size) and ``subsample`` (the
    batch's row indices in the full data), so that ``pyro.plate("data", n_obs,
    subsample=...)`` scales the batch's terms by ``n_obs / len(x)``.

    Parameters
    ----------
    input_dim : int
        D, pixels per (flattened) observation.
    latent_dim : int
        L, size of the code z.
    likelihood : {"bernoulli", "continuous_bernoulli", "gaussian"}
        The pixel density (:data:`LIKELIHOODS`).
    prior : str, LatentPrior or Pyro distribution, optional
        ``None``/``"standard"``: :math:`\mathcal N(0, I)`; ``"mog"``/``"vamp"`` or an instance
        of :class:`~ppl_models.models.mixture_vae.MixtureOfGaussiansPrior` /
        :class:`~ppl_models.models.mixture_vae.VampPrior`; any fixed Pyro distribution of event
        shape ``(L,)``.
    architecture : {"mlp", "conv"}
        ``conv`` is for ``1 x 28 x 28`` images (``input_dim=784``).
    hidden : sequence of int
        Hidden widths of the encoder's MLP (the decoder mirrors them); ``()`` makes both
        networks affine. For ``conv``, the last entry is the dense layer's width.
    activation : str
        Hidden nonlinearity (:data:`ppl_models.nn.ACTIVATIONS`).
    obs_scale : float, optional
        For ``likelihood="gaussian"``: a fixed observation scale; ``None`` learns it.

    Attributes
    ----------
    encoder, decoder, likelihood, prior : nn.Module
    """

    local_plate: ClassVar[str] = "data"
    local_sites: ClassVar[tuple[str, ...]] = ("z",)
    enumerated_sites: ClassVar[tuple[str, ...]] = ()
    max_plate_nesting: ClassVar[int] = 1
    observed_site: ClassVar[str] = "x"
    #: Names of the per-observation ELBO terms of :meth:`elbo_terms`.
    term_names: ClassVar[tuple[str, ...]] = ("reconstruction", "kl")
    name: ClassVar[str] = "vae"

    def __init__(
        self,
        input_dim: int,
        latent_dim: int = 10,
        *,
        likelihood: str = "bernoulli",
        prior: str | LatentPrior | dist.Distribution | None = None,
        architecture: str = "mlp",
        hidden: Sequence[int] | int = (256,),
        activation: str = "relu",
        obs_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.input_dim = check_int(input_dim, "input_dim")
        self.latent_dim = check_int(latent_dim, "latent_dim")
        if likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {likelihood!r}; choose one of {sorted(LIKELIHOODS)}"
            )
        self.architecture = architecture
        self.hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        self.activation = activation
        self.likelihood = LIKELIHOODS[likelihood](self.input_dim, obs_scale)
        self.encoder = self._make_encoder()
        self.decoder = make_decoder(
            architecture, self.latent_dim, self.input_dim, self.hidden, activation
        )
        self.prior = _resolve_prior(prior)
        self.prior.build(self.latent_dim, self.input_dim, self.likelihood.domain)

    def _make_encoder(self) -> nn.Module:
        return make_encoder(
            self.architecture, self.input_dim, self.latent_dim, self.hidden, self.activation
        )

    # ------------------------------------------------------------------ structure
    @property
    def generative_modules(self) -> dict[str, nn.Module]:
        """Networks with parameters of :math:`p` (registered in :meth:`model`)."""
        modules = {"decoder": self.decoder, "likelihood": self.likelihood, "prior": self.prior}
        if self.prior.uses_encoder:
            modules["encoder"] = self.encoder
        return {k: m for k, m in modules.items() if any(True for _ in m.parameters())}

    @property
    def inference_modules(self) -> dict[str, nn.Module]:
        """Networks with parameters of :math:`q` (registered in :meth:`guide`)."""
        return {"encoder": self.encoder}

    @property
    def priors(self) -> dict:
        """The user's fixed distribution over ``z`` (a :class:`DistributionPrior`), else empty:
        no other site takes a user prior."""
        if isinstance(self.prior, DistributionPrior):
            return {"z": self.prior.fixed}
        return {}

    def config(self) -> dict:
        """JSON-ready constructor arguments (the prior by its description)."""
        return {
            "input_dim": self.input_dim,
            "latent_dim": self.latent_dim,
            "likelihood": self.likelihood.name,
            "prior": self.prior.config(),
            "architecture": self.architecture,
            "hidden": list(self.hidden),
            "activation": self.activation,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], priors: dict[str, Any] | None = None) -> VAE:
        """The model :meth:`config` describes (networks freshly initialised).

        The latent prior is rebuilt from :data:`LATENT_PRIORS` by its ``name``; a fixed
        distribution prior (``"distribution"``) comes from ``priors["z"]``.
        """
        config = dict(config)
        spec = dict(config.pop("prior"))
        name = spec.pop("name")
        if name == DistributionPrior.name:
            if not priors or "z" not in priors:
                raise ValueError("prior: a 'distribution' latent prior needs its saved values")
            prior: LatentPrior = DistributionPrior(priors["z"])
        elif name in LATENT_PRIORS:
            prior = LATENT_PRIORS[name](**spec)
        else:
            raise ValueError(f"prior: unknown latent prior {name!r}; known {sorted(LATENT_PRIORS)}")
        return cls(**config, prior=prior)

    def dims(self) -> dict[str, list[str]]:
        """ArviZ dims of the code and the data."""
        return {"z": ["obs", "latent"], self.observed_site: ["obs", "feature"]}

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, latent_dim={self.latent_dim}, "
            f"likelihood='{self.likelihood.name}', prior='{self.prior.name}', "
            f"architecture='{self.architecture}'"
        )

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def validate(self, data: Any) -> torch.Tensor:
        """Check ``(N, D)`` data against the model and its likelihood; cast to its dtype."""
        data = check_data(data)
        check_features(data, self.input_dim, what="the model takes",
                       hint="images must be flattened, e.g. load_images(..., flatten=True)")
        self.likelihood.validate(data)
        return data.to(self.dtype)

    # ------------------------------------------------------------------ distributions
    def prior_distribution(self) -> dist.Distribution:
        r""":math:`p_\lambda(z)`, event shape ``(L,)``."""
        return self.prior.distribution(self)

    def encode(self, x: torch.Tensor) -> dist.Distribution:
        r""":math:`q_\phi(z \mid x)`, batch ``x.shape[:-1]``, event ``(L,)``."""
        loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)

    def code_mean(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\mu_\phi(x) = \mathbb E_q[z \mid x]`, ``(B, L)``."""
        return self.encoder(x)[0]

    def decode(self, z: torch.Tensor) -> dist.Distribution:
        r""":math:`p_\theta(x \mid z)`, batch ``z.shape[:-1]``, event ``(D,)``."""
        return self.likelihood(self.decoder(z))

    # ------------------------------------------------------------------ Pyro model and guide
    def _plate(
        self, x: torch.Tensor | None, n_obs: int | None, subsample: torch.Tensor | None
    ) -> pyro.plate:
        if subsample is not None:
            if n_obs is None:
                raise ValueError("subsample needs n_obs, the size of the full data")
            if x is not None and len(subsample) != x.shape[0]:
                raise ValueError(
                    f"subsample has {len(subsample)} indices for a batch of {x.shape[0]} rows"
                )
            return pyro.plate(self.local_plate, int(n_obs), subsample=subsample)
        if x is None:
            if n_obs is None:
                raise ValueError("simulating needs n_obs when x is None")
            return pyro.plate(self.local_plate, int(n_obs))
        if n_obs is not None and int(n_obs) != x.shape[0]:
            raise ValueError(
                f"n_obs={n_obs} but x has {x.shape[0]} rows: pass subsample=the rows' indices "
                "in the full data for a minibatch"
            )
        return pyro.plate(self.local_plate, x.shape[0])

    def model(
        self,
        x: torch.Tensor | None = None,
        *,
        n_obs: int | None = None,
        subsample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""``z ~ p(z)``, ``x ~ p(x | z)`` in the plate ``"data"``; simulates when ``x=None``."""
        for name, module in self.generative_modules.items():
            pyro.module(name, module)
        with self._plate(x, n_obs, subsample):
            z = pyro.sample("z", self.prior_distribution())
            return pyro.sample(self.observed_site, self.decode(z), obs=x)

    def guide(
        self,
        x: torch.Tensor,
        *,
        n_obs: int | None = None,
        subsample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""The amortized posterior: ``z ~ q(z | x)`` in the plate ``"data"``."""
        for name, module in self.inference_modules.items():
            pyro.module(name, module)
        with self._plate(x, n_obs, subsample):
            return pyro.sample("z", self.encode(x))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(*args, **kwargs)

    # ------------------------------------------------------------------ closed forms
    def log_importance_weights(self, x: torch.Tensor, num_particles: int) -> torch.Tensor:
        r"""``(S, B)`` log weights :math:`\log p(x, z_s) - \log q(z_s \mid x)`, :math:`z_s \sim q`.

        :math:`\log \frac1S \sum_s e^{w_s}` is the importance-weighted bound of Burda et al.
        (2016); ``S = 1`` gives a one-sample ELBO estimate.
        """
        q = self.encode(x)
        z = q.rsample((num_particles,))
        return self.decode(z).log_prob(x) + self.prior_distribution().log_prob(z) - q.log_prob(z)

    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""Per-observation ELBO terms ``(B,)``: ``reconstruction - kl`` is the ELBO.

        ``reconstruction`` :math:`= \log p(x \mid z)` at one :math:`z \sim q(z \mid x)`;
        ``kl`` is :math:`\mathrm{KL}(q \| p)` in closed form when PyTorch has it (the standard
        Normal prior), else :math:`\log q(z \mid x) - \log p(z)` at the same ``z``.
        """
        q = self.encode(x)
        z = q.rsample()
        prior = self.prior_distribution()
        try:
            kl = kl_divergence(q, prior)
        except NotImplementedError:
            kl = q.log_prob(z) - prior.log_prob(z)
        return {"reconstruction": self.decode(z).log_prob(x), "kl": kl}
