r"""The contracts between models and everything that fits, reads or compares them.

Drivers (:mod:`ppl_models.infer`), diagnostics and workflows ask a model what it can do only
through these roles, with ``isinstance(model, Role)``: never by probing attribute names with
``getattr``/``hasattr`` and never through a private method. A model takes a role by having its
members (the protocols are ``runtime_checkable``, so a user's own class needs no import from
here); the collection's classes also inherit them explicitly, so that the contract a new family
must meet is written down once, here. The methods are abstract: a class that inherits a role
and misses one of its methods cannot be instantiated.

=========================== ===============================================================
role                        who needs it
=========================== ===============================================================
:class:`LatentModel`        every driver: a Pyro ``model(data)`` with declared structure
:class:`CollapsedLikelihood` NUTS and guides on the collapsed density, pointwise
                            log-likelihood (LOO, information criteria), ArviZ conversion
:class:`CollapsedPosterior`  the fast NUTS potential and collapsed SVI: the priors of the
                            global sites as distributions beside the collapsed likelihood
:class:`MixtureModel`       starting points, relabelling, collapsed-component warnings
:class:`ClosedFormEM`       ``fit_em``'s closed-form iterations (E-step and M-step)
:class:`ImportanceWeighted` IWAE bounds on held-out data
:class:`AmortizedModel`     minibatch SVI on the model's own ELBO estimator, encoder
                            diagnostics, saved networks (the VAE family)
:class:`LabelledAmortized`  cluster labels of an amortized model (the GMVAE)
:class:`AdversarialModel`   the trainer's adversarial step: two players, their parameters,
                            the draws the discriminator tells apart (GAN, AAE, WAE)
=========================== ===============================================================

:mod:`guides` reads the same attribute names by duck typing, since it never imports
:mod:`ppl_models` (see :mod:`guides.structure`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import pyro.distributions as dist
import torch

__all__ = [
    "AdversarialDraws",
    "AdversarialModel",
    "AmortizedModel",
    "ClosedFormEM",
    "CollapsedLikelihood",
    "CollapsedPosterior",
    "ImportanceWeighted",
    "LabelledAmortized",
    "LatentModel",
    "MixtureModel",
]


@runtime_checkable
class LatentModel(Protocol):
    """A latent-variable model: structure and priors, never fitted values.

    Attributes
    ----------
    name : str
        Registry name (``FitResult`` saves it; the command line offers it).
    local_plate : str or None
        Name of the per-observation plate (``None`` when the model has none).
    local_sites : tuple of str
        Latent sites inside ``local_plate`` (continuous or enumerated).
    enumerated_sites : tuple of str
        Discrete latents summed out by parallel enumeration; guides never cover them.
    observed_site : str
        The site that holds the data.
    max_plate_nesting : int
        For ``TraceEnum_ELBO`` and NUTS.
    priors : mapping of str to prior specification
        The user's priors, validated at construction (empty for a model with none).
    """

    name: str
    local_plate: str | None
    local_sites: tuple[str, ...]
    enumerated_sites: tuple[str, ...]
    observed_site: str
    max_plate_nesting: int
    priors: Mapping[str, Any]

    @abstractmethod
    def model(self, data: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The Pyro model (stable snake_case site names)."""

    @abstractmethod
    def validate(self, data: Any) -> torch.Tensor:
        """``data`` as the tensor the model takes, or a ``ValueError`` naming the problem."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-ready constructor arguments (priors excluded): ``cls(**config())`` rebuilds
        the structure."""

    @abstractmethod
    def dims(self) -> dict[str, list[str]]:
        """ArviZ dims of every named site and derived quantity."""


@runtime_checkable
class CollapsedLikelihood(Protocol):
    r"""A model whose enumerated labels can be summed out in closed form.

    :meth:`marginal_model` targets the same posterior over the global sites as ``model`` under
    enumeration (same site names); :meth:`log_likelihood` gives the pointwise
    :math:`\log p(x_n \mid \theta)`.
    """

    @abstractmethod
    def marginal_model(self, data: torch.Tensor) -> None: ...

    @abstractmethod
    def log_likelihood(
        self, data: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Pointwise log-likelihood, shape ``(*batch, N)`` for params with leading batch
        dimensions."""

    @abstractmethod
    def site_shapes(self, n_features: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the global sites for data with ``n_features`` columns."""

    @abstractmethod
    def global_sites(self, n_features: int) -> list[str]:
        """The global *latent* sites (fixed ones excluded), in model order."""

    @abstractmethod
    def full_params(
        self, params: Mapping[str, torch.Tensor], n_features: int
    ) -> dict[str, torch.Tensor]:
        """Site values with fixed sites filled in."""

    @abstractmethod
    def derived_quantities(
        self, params: Mapping[str, torch.Tensor], n_features: int
    ) -> dict[str, torch.Tensor]:
        """Quantities a reader wants beside the sites (e.g. a mixture's covariances), with
        the same leading batch dimensions; their dims are in :meth:`LatentModel.dims`."""


@runtime_checkable
class CollapsedPosterior(CollapsedLikelihood, Protocol):
    r"""A collapsed model whose whole posterior density is in closed form.

    With :meth:`global_priors` beside :meth:`~CollapsedLikelihood.log_likelihood`, the
    unnormalised log posterior of the global sites is

    .. math::

        \log p(\theta, x) = \sum_s \log p_s(\theta_s) + \sum_n \log p(x_n \mid \theta),

    which :mod:`ppl_models.infer.potential` turns into NUTS's potential energy and the
    collapsed ELBO without tracing the Pyro model. It must be the density
    :meth:`~CollapsedLikelihood.marginal_model` traces (a test checks it).
    """

    @abstractmethod
    def global_priors(self, data: torch.Tensor) -> dict[str, dist.Distribution]:
        """The prior of each global *latent* site (fixed sites excluded), in model order, as
        one distribution over the site's whole value (``event_shape`` equal to the site's
        shape, so ``log_prob`` is a scalar); its ``support`` decides the site's transform."""


@runtime_checkable
class MixtureModel(CollapsedLikelihood, Protocol):
    """A finite mixture: ``n_components`` labels, per-observation memberships.

    ``location_site`` names the site whose per-component values identify the labels: draws are
    matched to a reference by the squared distance between them (relabelling), and a canonical
    order sorts the components by its first coordinate.
    """

    n_components: int
    location_site: str

    @abstractmethod
    def responsibilities(
        self, data: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """:math:`p(z_n = k \\mid x_n, \\theta)`, shape ``(N, K)``."""

    @abstractmethod
    def initial_params(
        self, data: torch.Tensor, resp: torch.Tensor, reg_covar: float = 1e-6
    ) -> dict[str, torch.Tensor]:
        """Site values from responsibility-weighted moments (a starting point)."""

    @abstractmethod
    def relabel_sites(self) -> dict[str, int]:
        """Sites (and derived quantities) indexed by component, with the axis of the
        component counted from the right of the site's own shape (``-2`` for ``(K, D)``),
        for label switching."""


@runtime_checkable
class ClosedFormEM(Protocol):
    """Public hooks of a closed-form EM (``fit_em`` calls only these).

    A *state* is the model's own form of the parameters (e.g. moments), ``prepared`` what
    :meth:`em_prepare` makes of the data once per fit.
    """

    @abstractmethod
    def closed_form_unavailable(self, objective: str) -> str | None:
        """Why the closed form cannot serve ``objective`` (``None`` if it can)."""

    @abstractmethod
    def em_state(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def em_params(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def em_prepare(self, data: torch.Tensor) -> Any:
        """Data prepared once per fit for :meth:`em_iteration`."""

    @abstractmethod
    def em_iteration(
        self, prepared: Any, state: Mapping[str, torch.Tensor], reg_covar: float
    ) -> tuple[float, dict[str, torch.Tensor]]:
        """Total log-likelihood at ``state`` (labels summed out) and the next state."""

    @abstractmethod
    def em_log_likelihood(self, prepared: Any, state: Mapping[str, torch.Tensor]) -> float:
        """Total log-likelihood at ``state``."""

    @abstractmethod
    def m_step(
        self, data: torch.Tensor, resp: torch.Tensor, *, reg_covar: float
    ) -> dict[str, torch.Tensor]:
        """The state maximising the expected complete-data log-likelihood."""


@runtime_checkable
class ImportanceWeighted(Protocol):
    """A model that weighs draws of its amortized posterior (importance-weighted bounds)."""

    @abstractmethod
    def log_importance_weights(self, x: torch.Tensor, num_particles: int) -> torch.Tensor:
        """:math:`\\log p(x, z_s) - \\log q(z_s \\mid x)`, :math:`z_s \\sim q(z \\mid x)`,
        shape ``(num_particles, B)``."""


@runtime_checkable
class AmortizedModel(ImportanceWeighted, Protocol):
    """A model with its own amortized guide and ELBO estimator (the VAE family).

    ``term_names`` lists the ELBO's terms: the reconstruction term first, the KL terms after
    it, so that ``ELBO = terms[0] - sum(terms[1:])`` per observation.
    """

    term_names: tuple[str, ...]

    @abstractmethod
    def guide(self, data: torch.Tensor | None = None, **kwargs: Any) -> Any: ...

    @abstractmethod
    def encode(self, x: torch.Tensor) -> dist.Distribution:
        """:math:`q(z \\mid x)`."""

    @abstractmethod
    def decode(self, z: torch.Tensor) -> dist.Distribution:
        """:math:`p(x \\mid z)`."""

    @abstractmethod
    def prior_distribution(self) -> dist.Distribution: ...

    @abstractmethod
    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-observation ELBO terms, each ``(B,)``, one reparameterised draw."""

    @abstractmethod
    def code_mean(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathbb E_q[z \\mid x]`, shape ``(B, L)`` (labels averaged out)."""

    @abstractmethod
    def parameters(self) -> Any: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class LabelledAmortized(AmortizedModel, Protocol):
    """An amortized model with a discrete cluster label (the GMVAE)."""

    n_components: int

    @abstractmethod
    def code_given_label(self, y: torch.Tensor | None = None) -> dist.Distribution:
        """:math:`p(z \\mid y)`; every label stacked (batch ``(K,)``) when ``y`` is None."""

    @abstractmethod
    def label_posterior_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of :math:`q(y \\mid x)`, shape ``(B, K)``."""


class AdversarialDraws(NamedTuple):
    """One batch of the adversarial game: what the discriminator tells apart.

    ``real`` are draws of the target (data for a GAN, prior codes for an AAE), ``fake`` the
    generator's draws (carrying its graph), ``context`` whatever else the generator's terms
    need (e.g. an InfoGAN's codes); all leading dimension ``B``.
    """

    real: torch.Tensor
    fake: torch.Tensor
    context: dict[str, torch.Tensor]


@runtime_checkable
class AdversarialModel(Protocol):
    r"""A model trained as a two-player game (the adversarial step of the trainer).

    The discriminator :math:`D` (logits) separates ``real`` from ``fake`` draws of
    :meth:`adversarial_draws`; the generator minimises ``adversarial_weight`` times its
    adversarial loss plus its own terms (:meth:`generator_terms`: a reconstruction cost, an
    MMD penalty, ...). A model whose :meth:`discriminator_parameters` is empty (the MMD
    Wasserstein autoencoder) trains on its own terms alone. The two parameter lists must be
    disjoint.
    """

    adversarial_weight: float

    @abstractmethod
    def generator_parameters(self) -> list[torch.nn.Parameter]: ...

    @abstractmethod
    def discriminator_parameters(self) -> list[torch.nn.Parameter]: ...

    @abstractmethod
    def adversarial_draws(self, x: torch.Tensor) -> AdversarialDraws:
        """Real and fake draws for the batch ``x`` (fresh noise from the global RNG)."""

    @abstractmethod
    def discriminate(self, samples: torch.Tensor) -> torch.Tensor:
        """Logits of :math:`D`, shape ``(B,)``: large for ``real``; or ``(B, H)`` for H
        discriminators played side by side (the step's losses average over them)."""

    @abstractmethod
    def generator_terms(self, x: torch.Tensor, draws: AdversarialDraws) -> dict[str, torch.Tensor]:
        """The generator's own costs on the batch, each a scalar (batch mean, weights
        applied), to be minimised beside the adversarial loss (``{}`` for a GAN)."""

    @abstractmethod
    def generate(self, num_samples: int) -> torch.Tensor:
        """``(num_samples, D)`` draws of the generative model (no gradients needed)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...
