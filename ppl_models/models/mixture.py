"""Finite mixtures whose cluster label is a discrete latent summed out exactly.

The shared structure of every finite mixture in the collection: global weights, locations and
a scale/correlation parametrisation of each component's spread, a per-observation label that
Pyro enumerates in parallel, and the vectorised pointwise log-likelihood with the label summed
out. Subclasses say only what a component's distribution is.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import infer_discrete
from torch.distributions import constraints

from ppl_models._shared.checks import check_choice, check_int
from ppl_models.data import check_data
from ppl_models.models.protocols import CollapsedPosterior, LatentModel, MixtureModel
from ppl_models.priors import PriorSpec, SiteSpec, check_priors

__all__ = ["COVARIANCE_TYPES", "FiniteMixture"]

COVARIANCE_TYPES = ("full", "diag", "spherical")

#: Sites a user may give priors for, with their domains.
GLOBAL_SITES: dict[str, SiteSpec] = {
    "weights": SiteSpec(constraints.simplex, 1, "component weights (a simplex of size K)"),
    "locs": SiteSpec(constraints.real, 1, "component locations (real, shape (K, D))"),
    "scale": SiteSpec(constraints.positive, 1, "component scales (positive)"),
    "corr_chol": SiteSpec(
        constraints.corr_cholesky,
        2,
        "the Cholesky factor of each component's correlation matrix (shape (K, D, D); "
        "use LKJCholesky)",
    ),
}


class FiniteMixture(LatentModel, MixtureModel, CollapsedPosterior):
    r"""Base class: a K-component mixture with an enumerated label.

    .. math::

        w &\sim p(w), \quad \mu_k \sim p(\mu), \quad \sigma_k \sim p(\sigma),
            \quad L_k \sim \mathrm{LKJCholesky}(D, \eta) \\
        z_n \mid w &\sim \mathrm{Categorical}(w), \qquad
        x_n \mid z_n = k \sim f(\cdot \mid \mu_k, \Sigma_k),
            \quad \Sigma_k = \mathrm{diag}(\sigma_k) L_k L_k^\top \mathrm{diag}(\sigma_k)

    Subclasses define :meth:`component_distribution` (the density :math:`f`). The label
    ``assignment`` is marked for parallel enumeration, so ``TraceEnum_ELBO``, NUTS and EM sum it
    out exactly; guides must not cover it (:attr:`enumerated_sites`).

    Parameters
    ----------
    n_components : int
        K, the number of components (at least 1).
    covariance_type : {"full", "diag", "spherical"}
        ``full``: a scale per feature and an LKJ-distributed correlation Cholesky factor per
        component; ``diag``: a scale per feature; ``spherical``: one scale per component.
    priors : mapping, optional
        Replacement priors for any of ``weights``, ``locs``, ``scale``, ``corr_chol`` (a
        distribution, a callable ``data -> distribution``, or a tensor that fixes the site).
        Sites not named keep the defaults documented by the subclass.
    """

    enumerated_sites: ClassVar[tuple[str, ...]] = ("assignment",)
    local_plate: ClassVar[str] = "obs"
    local_sites: ClassVar[tuple[str, ...]] = ("assignment",)
    observed_site: ClassVar[str] = "x"
    max_plate_nesting: ClassVar[int] = 1
    location_site: ClassVar[str] = "locs"
    name: ClassVar[str] = "mixture"

    def __init__(
        self,
        n_components: int,
        covariance_type: str = "full",
        priors: Mapping[str, PriorSpec] | None = None,
    ) -> None:
        if isinstance(n_components, torch.SymInt):  # a traced size is an integer too
            n_components = int(n_components)
        self.n_components = check_int(n_components, "n_components")
        check_choice(covariance_type, "covariance_type", COVARIANCE_TYPES)
        self.covariance_type = covariance_type
        priors = dict(priors or {})
        if "corr_chol" in priors and covariance_type != "full":
            raise ValueError(
                f"a 'corr_chol' prior needs covariance_type='full'; got '{covariance_type}'"
            )
        if "weights" in priors and self.n_components == 1:
            raise ValueError("a 'weights' prior needs at least 2 components")
        # Supports are checked now; shapes (and callables) once the data fix D.
        self.priors: dict[str, PriorSpec] = check_priors(priors, self.site_specs(), shapes=None)

    # ------------------------------------------------------------------ structure
    def site_shapes(self, n_features: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the global sites that exist for data with ``n_features`` columns."""
        k, d = self.n_components, n_features
        shapes: dict[str, tuple[int, ...]] = {}
        if k > 1:
            shapes["weights"] = (k,)
        shapes["locs"] = (k, d)
        shapes["scale"] = (k,) if self.covariance_type == "spherical" else (k, d)
        if self.covariance_type == "full" and d > 1:
            shapes["corr_chol"] = (k, d, d)
        return shapes

    def site_specs(self) -> dict[str, SiteSpec]:
        """Domain and event dimension of each global site (one scale per component when
        ``covariance_type="spherical"``)."""
        if self.covariance_type != "spherical":
            return GLOBAL_SITES
        scale = SiteSpec(constraints.positive, 0, "component scales (positive, one per component)")
        return {**GLOBAL_SITES, "scale": scale}

    def global_sites(self, n_features: int) -> list[str]:
        """Names of the global *latent* sites (fixed sites excluded), in model order."""
        return [
            s
            for s in self.site_shapes(n_features)
            if not isinstance(self.priors.get(s), torch.Tensor)
        ]

    def dims(self) -> dict[str, list[str]]:
        """ArviZ dims of every global site (the ``obs`` dims of data and likelihood too)."""
        scale = ["component"] if self.covariance_type == "spherical" else ["component", "feature"]
        return {
            "weights": ["component"],
            "locs": ["component", "feature"],
            "scale": scale,
            "corr_chol": ["component", "feature", "feature_bis"],
            "covariances": ["component", "feature", "feature_bis"],
            self.observed_site: ["obs", "feature"],
            "assignment": ["obs"],
        }

    def relabel_sites(self) -> dict[str, int]:
        """Component-indexed sites and derived quantities, the component axis counted from the
        right of each one's own shape."""
        return {
            "weights": -1,
            "locs": -2,
            "scale": -1 if self.covariance_type == "spherical" else -2,
            "corr_chol": -3,
            "covariances": -3,
        }

    def derived_quantities(
        self, params: Mapping[str, torch.Tensor], n_features: int
    ) -> dict[str, torch.Tensor]:
        r"""The component covariances :math:`\Sigma_k` ``(..., K, D, D)`` of site values
        (fixed sites filled in), batch dimensions kept."""
        return {"covariances": self.covariances(self.full_params(params, n_features))}

    def validate(self, data: torch.Tensor) -> torch.Tensor:
        """Check data against the model (shape, values, K <= N) and priors' shapes for it."""
        data = check_data(data)
        n, d = data.shape
        if self.n_components > n:
            raise ValueError(
                f"n_components={self.n_components} is larger than the number of "
                f"observations ({n})"
            )
        shapes = self.site_shapes(d)
        misplaced = sorted(set(self.priors) - set(shapes))
        if misplaced:
            raise ValueError(
                f"prior given for {misplaced}, which this model does not have for {d} "
                f"feature(s) and {self.n_components} component(s)"
            )
        check_priors(self.priors, self.site_specs(), shapes, data)
        return data

    # ------------------------------------------------------------------ priors
    def default_prior(self, name: str, data: torch.Tensor | None, n_features: int):
        """The default prior of a site (see the subclass docstring for the maths)."""
        k = self.n_components
        dtype = torch.get_default_dtype() if data is None else data.dtype
        if data is None or data.shape[0] < 2:
            centre = torch.zeros(n_features, dtype=dtype)
            spread = torch.ones(n_features, dtype=dtype)
        else:
            centre = data.mean(0)
            spread = data.std(0)
            spread = torch.where(spread > 0, spread, torch.ones_like(spread))
        scale_spread = spread.mean() if self.covariance_type == "spherical" else spread
        if name == "weights":
            return dist.Dirichlet(torch.ones(k, dtype=dtype))
        if name == "locs":
            return dist.Normal(centre, 3.0 * spread)
        if name == "scale":
            return dist.Gamma(torch.full_like(scale_spread, 2.0), 2.0 / scale_spread)
        if name == "corr_chol":
            return dist.LKJCholesky(n_features, torch.tensor(2.0, dtype=dtype))
        raise KeyError(name)

    def log_prior(
        self, params: Mapping[str, torch.Tensor], data: torch.Tensor | None
    ) -> torch.Tensor:
        r""":math:`\log p(\theta)` summed over the latent global sites."""
        d = params["locs"].shape[-1]
        total = torch.zeros((), dtype=params["locs"].dtype)
        shapes = self.site_shapes(d)
        for name in self.global_sites(d):
            prior = self.prior(name, data, d)
            shape = shapes[name]
            batch = shape[: len(shape) - len(prior.event_shape)]
            total = total + prior.expand(batch).log_prob(params[name]).sum()
        return total

    def global_priors(self, data: torch.Tensor) -> dict[str, dist.Distribution]:
        """The prior of each latent global site over its whole value (``event_shape`` the
        site's shape), as :meth:`model` samples it (see
        :class:`~ppl_models.models.protocols.CollapsedPosterior`)."""
        d = data.shape[-1]
        shapes = self.site_shapes(d)
        out = {}
        for name in self.global_sites(d):
            prior = self.prior(name, data, d)
            shape = shapes[name]
            batch = shape[: len(shape) - len(prior.event_shape)]
            out[name] = prior.expand(batch).to_event(len(batch)) if batch else prior
        return out

    def prior(self, name: str, data: torch.Tensor | None, n_features: int):
        """The prior in force for site ``name``: the user's, else the default."""
        spec = self.priors.get(name)
        if spec is None:
            return self.default_prior(name, data, n_features)
        if isinstance(spec, torch.Tensor | dist.Distribution):
            return spec
        return spec(data)

    def _sample_global(self, name: str, data, n_features: int, plate) -> torch.Tensor:
        shape = self.site_shapes(n_features)[name]
        spec = self.prior(name, data, n_features)
        dtype = torch.get_default_dtype() if data is None else data.dtype
        if isinstance(spec, torch.Tensor):
            return spec.to(dtype).expand(shape)
        event_dim = self.site_specs()[name].event_dim
        extra = event_dim - len(spec.event_shape)
        batch = shape[: len(shape) - len(spec.event_shape)]
        prior = spec.expand(batch).to_event(extra) if extra else spec.expand(batch)
        # A user's prior may be in another precision than the data (a float32 prior, float64
        # data): drawn from it, a value is used in the data's precision.
        if name == "weights":
            return pyro.sample(name, prior).to(dtype)
        with plate:
            return pyro.sample(name, prior).to(dtype)

    def sample_globals(
        self, data: torch.Tensor | None, n_features: int
    ) -> dict[str, torch.Tensor]:
        """Sample (or read the fixed value of) every global site, as ``model`` does."""
        plate = pyro.plate("components", self.n_components, dim=-1)
        values = {
            name: self._sample_global(name, data, n_features, plate)
            for name in self.site_shapes(n_features)
        }
        if "weights" not in values:
            values["weights"] = torch.ones(1, dtype=values["locs"].dtype)
        return values

    # ------------------------------------------------------------------ the model
    @abstractmethod
    def component_distribution(self, params: Mapping[str, torch.Tensor]) -> dist.Distribution:
        """The batch of component densities, batch shape ``(..., K)``, event ``(D,)``."""

    def model(
        self,
        data: torch.Tensor | None = None,
        *,
        n_obs: int | None = None,
        n_features: int | None = None,
    ) -> torch.Tensor:
        """The Pyro model. With ``data=None`` it simulates ``n_obs`` points of ``n_features``."""
        if data is None:
            if n_obs is None or n_features is None:
                raise ValueError("simulating needs n_obs and n_features when data is None")
            n, d = int(n_obs), int(n_features)
        else:
            n, d = data.shape
        params = self.sample_globals(data, d)
        with pyro.plate(self.local_plate, n, dim=-1):
            z = pyro.sample(
                "assignment",
                dist.Categorical(params["weights"]),
                infer={"enumerate": "parallel"},
            )
            chosen = {name: value[z] for name, value in params.items() if name != "weights"}
            return pyro.sample(
                self.observed_site, self.component_distribution(chosen), obs=data
            )

    __call__ = model

    def marginal_model(self, data: torch.Tensor) -> None:
        r"""The same posterior over the globals with the label summed out in closed form.

        Samples the globals as :meth:`model` does and adds
        :math:`\sum_n \log \sum_k w_k f(x_n \mid \theta_k)` as one factor. NUTS on this
        collapsed model targets exactly the posterior of :meth:`model` under enumeration, at a
        fraction of the cost (no enumeration bookkeeping per gradient).
        """
        params = self.sample_globals(data, data.shape[1])
        pyro.factor("log_likelihood", self.log_likelihood(data, params).sum())

    # ------------------------------------------------------------------ closed forms
    def covariances(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Component covariance matrices ``(..., K, D, D)`` from site values."""
        scale_tril = self.scale_tril(params)
        return scale_tril @ scale_tril.transpose(-1, -2)

    def scale_tril(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Lower Cholesky factor of each component's covariance, ``(..., K, D, D)``."""
        locs = params["locs"]
        d = locs.shape[-1]
        scale = params["scale"]
        if self.covariance_type == "spherical":
            scale = scale.unsqueeze(-1).expand(locs.shape)
        if self.covariance_type == "full" and d > 1:
            return scale.unsqueeze(-1) * params["corr_chol"]
        return torch.diag_embed(scale)

    def site_params_from_moments(
        self, weights: torch.Tensor, locs: torch.Tensor, covariances: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Site values from weights, means and covariances (each ``(K, D, D)``).

        For ``diag`` and ``spherical`` the covariances may also be given in their compact
        forms ``(K, D)`` and ``(K,)``.
        """
        d = locs.shape[-1]
        if covariances.dim() == 3 and self.covariance_type != "full":
            covariances = torch.diagonal(covariances, dim1=-2, dim2=-1)
            if self.covariance_type == "spherical":
                covariances = covariances.mean(-1)
        params = {"weights": weights, "locs": locs}
        if self.covariance_type == "full":
            sd = torch.diagonal(covariances, dim1=-2, dim2=-1).sqrt()
            params["scale"] = sd
            if d > 1:
                corr = covariances / (sd.unsqueeze(-1) * sd.unsqueeze(-2))
                params["corr_chol"] = torch.linalg.cholesky(corr)
        else:
            params["scale"] = covariances.sqrt()
        site_names = self.site_shapes(d)
        return {name: value for name, value in params.items() if name in site_names}

    def initial_params(
        self, data: torch.Tensor, resp: torch.Tensor, reg_covar: float = 1e-6
    ) -> dict[str, torch.Tensor]:
        """Site values from responsibility-weighted moments (a starting point for fitting)."""
        nk, means, cov = weighted_moments(data, resp, reg_covar)
        return self.site_params_from_moments(nk / data.shape[0], means, cov)

    def full_params(
        self, params: Mapping[str, torch.Tensor], n_features: int
    ) -> dict[str, torch.Tensor]:
        """Site values with the fixed sites (and K=1 weights) filled in."""
        out = dict(params)
        for name, shape in self.site_shapes(n_features).items():
            spec = self.priors.get(name)
            if name not in out and isinstance(spec, torch.Tensor):
                out[name] = spec.expand(shape)
        if self.n_components == 1 and "weights" not in out:
            batch = out["locs"].shape[:-2]
            out["weights"] = torch.ones(*batch, 1, dtype=out["locs"].dtype)
        return out

    def log_likelihood(
        self, data: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        r"""Pointwise :math:`\log p(x_n \mid \theta)` with the label summed out.

        ``params`` may carry leading batch dimensions (draws); the result has shape
        ``(*batch, N)``.
        """
        return self.log_joint_components(data, params).logsumexp(-1).movedim(0, -1)

    def log_joint_components(
        self, data: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        r""":math:`\log w_k + \log f(x_n \mid \theta_k)`, shape ``(N, *batch, K)``."""
        params = self.full_params(params, data.shape[-1])
        components = self.component_distribution(params)
        batch = components.batch_shape
        x = data.reshape(data.shape[0], *([1] * len(batch)), data.shape[-1])
        return components.log_prob(x) + params["weights"].log()

    def assignments(
        self,
        data: torch.Tensor,
        params: Mapping[str, torch.Tensor],
        *,
        sample: bool = False,
    ) -> torch.Tensor:
        r"""Cluster labels from Pyro's :func:`~pyro.infer.infer_discrete`, shape ``(N,)``.

        ``sample=False`` gives the MAP label of each observation (``temperature=0``: a
        Viterbi-like max-sum over the enumerated label); ``sample=True`` draws each label from
        its exact posterior :math:`p(z_n \mid x_n, \theta)` (forward-filter backward-sample).
        """
        conditioned = poutine.condition(self.model, data=dict(params))
        labelled = infer_discrete(
            conditioned,
            first_available_dim=-1 - self.max_plate_nesting,
            temperature=1 if sample else 0,
        )
        trace = poutine.trace(labelled).get_trace(data)
        return trace.nodes["assignment"]["value"]

    def responsibilities(
        self, data: torch.Tensor, params: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        r""":math:`p(z_n = k \mid x_n, \theta)`, shape ``(N, K)`` (or ``(N, *batch, K)``)."""
        return self.log_joint_components(data, params).softmax(-1)

    def __repr__(self) -> str:
        custom = f", priors={sorted(self.priors)}" if self.priors else ""
        return (
            f"{type(self).__name__}(n_components={self.n_components}, "
            f"covariance_type='{self.covariance_type}'{custom})"
        )

    @classmethod
    def from_config(
        cls, config: Mapping[str, object], priors: Mapping[str, PriorSpec] | None = None
    ) -> FiniteMixture:
        """The model :meth:`config` and ``priors`` describe."""
        return cls(**config, priors=priors)

    def config(self) -> dict:
        """JSON-ready constructor arguments (priors are saved separately)."""
        return {"n_components": self.n_components, "covariance_type": self.covariance_type}


def weighted_moments(
    data: torch.Tensor, resp: torch.Tensor, reg_covar: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Responsibility-weighted counts, means and covariances.

    :math:`N_k = \sum_n r_{nk}` (plus ``10 eps`` so empty components stay finite),
    :math:`\mu_k = \sum_n r_{nk} x_n / N_k` and
    :math:`\Sigma_k = \sum_n r_{nk}(x_n - \mu_k)(x_n - \mu_k)^\top / N_k + \epsilon I`.
    """
    nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
    means = resp.T @ data / nk.unsqueeze(1)
    diff = data.unsqueeze(0) - means.unsqueeze(1)  # (K, N, D)
    cov = (resp.T.unsqueeze(-1) * diff).mT @ diff / nk[:, None, None]
    return nk, means, cov + reg_covar * torch.eye(data.shape[1], dtype=data.dtype)
