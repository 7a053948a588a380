r"""VAEs with mixture priors: a learned mixture of Gaussians, the VampPrior, and the GMVAE.

Two priors for :class:`~ppl_models.models.vae.VAE` (registered in
:data:`~ppl_models.models.vae.LATENT_PRIORS` as ``"mog"`` and ``"vamp"``):

* :class:`MixtureOfGaussiansPrior`: :math:`p_\lambda(z) = \sum_k \pi_k
  \mathcal N(z; m_k, \mathrm{diag}\, s_k^2)` with learned weights, means and scales;
* :class:`VampPrior`: :math:`p_\lambda(z) = \frac1K \sum_k q_\phi(z \mid u_k)`, the
  aggregate posterior of K learned pseudo-inputs :math:`u_k` (Tomczak & Welling 2018).

and one model with an explicit discrete latent, :class:`GMVAE`, in which the cluster label
is summed out exactly by ``TraceEnum_ELBO`` (Dilokthanakul et al. 2016; Rui Shu's GMVAE).

References
----------
Tomczak, J. M. & Welling, M. (2018). VAE with a VampPrior. AISTATS.
Dilokthanakul, N. et al. (2016). Deep unsupervised clustering with Gaussian mixture
variational autoencoders. arXiv:1611.02648.
Jiang, Z., Zheng, Y., Tan, H., Tang, B. & Zhou, H. (2017). Variational deep embedding: an
unsupervised and generative approach to clustering (VaDE). IJCAI.
Kingma, D. P. et al. (2016). Improved variational inference with inverse autoregressive
flow. NeurIPS (free bits).
Shu, R. (2016). Gaussian mixture VAE: lessons in variational inference, generative models,
and deep nets. Blog post, ruishu.io/2016/12/25/gmvae.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from ppl_models._shared.checks import check_float, check_int
from ppl_models.models.protocols import LabelledAmortized
from ppl_models.models.vae import LATENT_PRIORS, VAE, LatentPrior
from ppl_models.nn import make_classifier, make_encoder

__all__ = ["GMVAE", "DiagonalNormalMixture", "MixtureOfGaussiansPrior", "VampPrior"]


class DiagonalNormalMixture(dist.MixtureSameFamily):
    r"""A mixture of K diagonal Gaussians whose density costs one matrix product.

    .. math:: \log p(z) = \operatorname{logsumexp}_k \Big[\log \pi_k - \tfrac12 \sum_d
        \frac{(z_d - m_{kd})^2}{s_{kd}^2} - \sum_d \log s_{kd} - \tfrac L2 \log 2\pi\Big]

    with the square expanded, :math:`\sum_d (z_d - m_{kd})^2 / s_{kd}^2 = z^2 \cdot s_k^{-2}
    - 2 z \cdot (m_k s_k^{-2}) + m_k^2 \cdot s_k^{-2}`, so that N codes against K components
    is an ``(N, 2L) @ (2L, K)`` product instead of an ``(N, K, L)`` tensor (for the VampPrior's
    500 components and 500 x 100 importance samples: 2 x 10^9 numbers). The product is taken
    in float64, where the expansion's cancellation costs nothing visible. Sampling and every
    other method are :class:`~pyro.distributions.MixtureSameFamily`'s.

    Parameters
    ----------
    logits : Tensor (K,)
        Unnormalised log weights.
    locs, scales : Tensor (K, L)
        Component means and standard deviations.
    """

    def __init__(
        self,
        logits: torch.Tensor,
        locs: torch.Tensor,
        scales: torch.Tensor,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(
            dist.Categorical(logits=logits),
            dist.Normal(locs, scales).to_event(1),
            validate_args=validate_args,
        )
        self.locs, self.scales = locs, scales

    def expand(self, batch_shape: Any, _instance: Any = None) -> dist.Distribution:
        """Broadcast over a batch (a plate) without copying the components."""
        return dist.ExpandedDistribution(self, batch_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape, latent_dim = value.shape[:-1], value.shape[-1]
        z = value.reshape(-1, latent_dim).double()
        precision = self.scales.double().pow(-2)  # (K, L)
        locs = self.locs.double()
        features = torch.cat([z * z, z], -1)  # (N, 2L)
        coefficients = torch.cat([precision, -2 * locs * precision], -1)  # (K, 2L)
        quadratic = features @ coefficients.T + (locs * locs * precision).sum(-1)
        log_components = -0.5 * quadratic - self.scales.double().log().sum(-1) - (
            0.5 * latent_dim * math.log(2 * math.pi)
        )
        log_weights = torch.log_softmax(self.mixture_distribution.logits.double(), -1)
        log_density = torch.logsumexp(log_components + log_weights, -1)
        return log_density.to(value.dtype).reshape(shape)


class MixtureOfGaussiansPrior(LatentPrior):
    r"""A learned mixture of K diagonal Gaussians over the code.

    .. math:: p_\lambda(z) = \sum_{k=1}^K \pi_k\, \mathcal N(z; m_k, \mathrm{diag}\, s_k^2),
        \qquad \pi = \mathrm{softmax}(\alpha)

    Means start at standard Normal draws (so the components differ), scales at 1, weights
    uniform. ``learn_weights=False`` keeps :math:`\pi` uniform.
    """

    name = "mog"

    def __init__(self, n_components: int = 10, *, learn_weights: bool = True) -> None:
        super().__init__()
        self.n_components = check_int(n_components, "n_components")
        self.learn_weights = bool(learn_weights)

    def build(self, latent_dim: int, input_dim: int, domain: str) -> None:
        super().build(latent_dim, input_dim, domain)
        k = self.n_components
        self.locs = nn.Parameter(torch.randn(k, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(k, latent_dim))
        if self.learn_weights:
            self.logits = nn.Parameter(torch.zeros(k))
        else:
            self.register_buffer("logits", torch.zeros(k))

    def log_weights(self) -> torch.Tensor:
        r""":math:`\log \pi`, shape ``(K,)``."""
        return torch.log_softmax(self.logits, -1)

    def components(self) -> dist.Distribution:
        r""":math:`\mathcal N(m_k, \mathrm{diag}\, s_k^2)`, batch ``(K,)``, event ``(L,)``."""
        return dist.Normal(self.locs, self.log_scales.exp()).to_event(1)

    def distribution(self, vae: Any) -> dist.Distribution:
        return DiagonalNormalMixture(self.logits, self.locs, self.log_scales.exp())

    def config(self) -> dict:
        return {"name": self.name, "n_components": self.n_components,
                "learn_weights": self.learn_weights}


class VampPrior(LatentPrior):
    r"""The variational mixture of posteriors prior (Tomczak & Welling 2018).

    .. math:: p_\lambda(z) = \frac1K \sum_{k=1}^K q_\phi(z \mid u_k)

    with K learned pseudo-inputs :math:`u_k`, pushed through the model's own encoder. For
    image likelihoods (data in [0, 1]) the pseudo-inputs are :math:`\sigma(a_k)` of free
    parameters :math:`a_k` (started near 0.5 gray); for real data they are free.
    """

    name = "vamp"
    uses_encoder = True

    def __init__(self, n_pseudo: int = 50) -> None:
        super().__init__()
        self.n_pseudo = check_int(n_pseudo, "n_pseudo")
        self.domain = "real"

    def build(self, latent_dim: int, input_dim: int, domain: str) -> None:
        super().build(latent_dim, input_dim, domain)
        self.domain = domain
        self.raw_inputs = nn.Parameter(0.1 * torch.randn(self.n_pseudo, input_dim))

    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs ``(K, D)``, in the data's domain."""
        return torch.sigmoid(self.raw_inputs) if self.domain == "unit" else self.raw_inputs

    def distribution(self, vae: Any) -> dist.Distribution:
        loc, scale = vae.encoder(self.pseudo_inputs())
        return DiagonalNormalMixture(torch.zeros(self.n_pseudo, dtype=loc.dtype), loc, scale)

    def config(self) -> dict:
        return {"name": self.name, "n_pseudo": self.n_pseudo}


LATENT_PRIORS.update({MixtureOfGaussiansPrior.name: MixtureOfGaussiansPrior,
                      VampPrior.name: VampPrior})


class GMVAE(VAE, LabelledAmortized):
    r"""Gaussian-mixture VAE with the cluster label enumerated exactly.

    .. math::

        y_n \sim \mathrm{Categorical}(1/K), \quad z_n \mid y_n \sim
            \mathcal N(m_{y_n}, \mathrm{diag}\, s_{y_n}^2), \quad
        x_n \mid z_n \sim \prod_d f(x_{nd} \mid \eta_\theta(z_n)_d)

    (Dilokthanakul et al. 2016; Shu 2016). The label is never sampled:

    * ``conditional_encoder=True`` (Shu's factorisation): the guide is
      :math:`q(y \mid x)\, q(z \mid x, y)` with ``y`` enumerated in parallel in the guide, so
      the ELBO is the exact sum
      :math:`\sum_y q(y \mid x) \{ \mathbb E_{q(z \mid x, y)}[\log p(x \mid z) + \log p(z \mid y)
      - \log q(z \mid x, y)] + \log p(y) - \log q(y \mid x) \}`;
    * ``conditional_encoder=False``: the guide is :math:`q(z \mid x)` and the model sums the
      label out, :math:`\mathbb E_{q(z \mid x)}[\log p(x \mid z) + \log \sum_y p(y)
      p(z \mid y) - \log q(z \mid x)]`; the label's posterior given the code,
      :math:`p(y \mid z) \propto p(y) p(z \mid y)`, is then exact.

    ``TraceEnum_ELBO`` (``max_plate_nesting=1``) computes either; the per-observation terms of
    :meth:`elbo_terms` are ``reconstruction``, ``kl_z`` and ``kl_y`` (their difference is the
    ELBO).

    **Why it degenerates, and the configuration that clusters.** With the conditional encoder
    the ELBO holds :math:`-\mathrm{KL}(q(y \mid x) \| \mathcal U_K)` for every image, which
    is largest for a uniform :math:`q(y \mid x)`; since :math:`q(z \mid x, y)` can send every
    label's code into its own component, the decoder never needs the label, nothing pays
    for an informative :math:`q(y \mid x)`, and it drifts to one effective cluster
    (measured on MNIST: 0.114 accuracy, chance). This is the degeneracy Dilokthanakul et al.
    (2016) describe and counter with a minimum-information constraint. With
    ``conditional_encoder=False`` the label's posterior is not a free network but the exact
    :math:`p(y \mid z)` of the mixture (VaDE's factorisation, Jiang et al. 2017), so the
    clusters are the mixture's components in code space, and what remains is where they
    start: a random start merges clusters for good (0.36 on MNIST). The configuration that
    clusters is VaDE's recipe, :func:`ppl_models.infer.fit_clustering_vae`: pretraining of
    the autoencoder, a start of the mixture on the codes, then the ELBO with the label
    summed out. On MNIST the start decides: EM on the codes gives about 0.7, a start along
    the codes' nearest-neighbour graph (``start="graph"``,
    :mod:`ppl_models.infer.graph_start`, the exact :math:`p(y \mid z)` then taught its
    clusters, :mod:`ppl_models.infer.label_start`) 0.90. The options of
    :meth:`training_objective` (``free_bits``, the
    minimum-information constraint; ``balance_weight``, an entropy term on the aggregated
    label distribution) and KL annealing (``kl_warmup_epochs``) are there for data where the
    clusters drift during the ELBO; on the bundled digits they changed the accuracy by at
    most 0.01. For clusters that are not Gaussian in code space (rings, bands), fit more
    components than clusters and merge them afterwards
    (:func:`ppl_models.diagnostics.merge_components.merge_components`). ``ppl-models fit
    vae --prior gmvae`` runs the recipe (measured, test accuracy: 0.73 on the bundled digits
    against 0.67 for k-means on the same pixels, with the EM start, the CLI's default; on
    MNIST 0.65-0.72 with the EM start and 0.90-0.91 with the graph start, against 0.51 for
    k-means, see ``benchmarks/RESULTS.md``).

    Parameters
    ----------
    input_dim, latent_dim
        As :class:`~ppl_models.models.vae.VAE`.
    n_clusters : int
        K, the number of values of the label.
    conditional_encoder : bool
        :math:`q(z \mid x, y)` and :math:`q(y \mid x)` (True, Shu's GMVAE) or
        :math:`q(z \mid x)` with the exact :math:`p(y \mid z)` (False, VaDE's; the one
        that clusters, see above).
    free_bits : float
        :math:`\lambda \ge 0`, nats per observation below which the code's KL is not
        pushed (:meth:`training_objective`; 0 = off).
    balance_weight : float
        :math:`w \ge 0`, the weight of the entropy of the batch's aggregated label
        distribution (:meth:`training_objective`; 0 = off).
    **options
        ``likelihood``, ``architecture``, ``hidden``, ``activation``, ``obs_scale`` as for
        :class:`~ppl_models.models.vae.VAE` (the prior is the mixture above).
    """

    enumerated_sites: ClassVar[tuple[str, ...]] = ("y",)
    local_sites: ClassVar[tuple[str, ...]] = ("y", "z")
    term_names: ClassVar[tuple[str, ...]] = ("reconstruction", "kl_z", "kl_y")
    name: ClassVar[str] = "gmvae"

    def __init__(
        self,
        input_dim: int,
        latent_dim: int = 10,
        n_clusters: int = 10,
        *,
        conditional_encoder: bool = True,
        likelihood: str = "bernoulli",
        architecture: str = "mlp",
        hidden: Sequence[int] | int = (256,),
        activation: str = "relu",
        obs_scale: float | None = None,
        free_bits: float = 0.0,
        balance_weight: float = 0.0,
    ) -> None:
        self.n_clusters = check_int(n_clusters, "n_clusters")
        self.conditional_encoder = bool(conditional_encoder)
        self.free_bits = check_float(free_bits, "free_bits", minimum=0)
        self.balance_weight = check_float(balance_weight, "balance_weight", minimum=0)
        super().__init__(
            input_dim,
            latent_dim,
            likelihood=likelihood,
            prior=MixtureOfGaussiansPrior(n_clusters, learn_weights=False),
            architecture=architecture,
            hidden=hidden,
            activation=activation,
            obs_scale=obs_scale,
        )
        if self.conditional_encoder:
            self.classifier = make_classifier(
                architecture, self.input_dim, self.n_clusters, self.hidden, activation
            )

    def _make_encoder(self) -> nn.Module:
        context = self.n_clusters if self.conditional_encoder else 0
        return make_encoder(self.architecture, self.input_dim, self.latent_dim, self.hidden,
                            self.activation, context_dim=context)

    @property
    def inference_modules(self) -> dict[str, nn.Module]:
        if self.conditional_encoder:
            return {"encoder": self.encoder, "classifier": self.classifier}
        return {"encoder": self.encoder}

    @property
    def n_components(self) -> int:
        """K, the number of values of the label (the role's name for ``n_clusters``)."""
        return self.n_clusters

    @classmethod
    def from_config(cls, config: dict[str, Any], priors: dict[str, Any] | None = None) -> GMVAE:
        """The model :meth:`config` describes (the prior is the model's own mixture)."""
        return cls(**config)

    def dims(self) -> dict[str, list[str]]:
        """ArviZ dims of the label, the code and the data."""
        return {"y": ["obs"], **super().dims()}

    def code_mean(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\mathbb E_q[z \mid x]`: with the conditional encoder the mean of the
        mixture :math:`\sum_y q(y \mid x)\, \mu_\phi(x, y)`."""
        if not self.conditional_encoder:
            return self.encoder(x)[0]
        qy = torch.softmax(self.classifier(x), -1)  # (B, K)
        labels = torch.arange(self.n_clusters, device=x.device)
        locs = self._encode_given(x, labels[:, None]).base_dist.loc  # (K, B, L)
        return (qy.T.unsqueeze(-1) * locs).sum(0)

    def config(self) -> dict:
        config = super().config()
        del config["prior"]
        return {**config, "n_clusters": self.n_clusters,
                "conditional_encoder": self.conditional_encoder,
                "free_bits": self.free_bits, "balance_weight": self.balance_weight}

    # ------------------------------------------------------------------ distributions
    def label_prior(self) -> dist.Categorical:
        """:math:`p(y)`, uniform over the K labels."""
        return dist.Categorical(logits=self.prior.logits)

    def code_given_label(self, y: torch.Tensor | None = None) -> dist.Distribution:
        r""":math:`p(z \mid y)`; every label stacked (batch ``(K,)``) when ``y`` is None."""
        components = self.prior.components()
        if y is None:
            return components
        return dist.Normal(self.prior.locs[y], self.prior.log_scales[y].exp()).to_event(1)

    def label_posterior_logits(self, x: torch.Tensor) -> torch.Tensor:
        r"""Logits ``(B, K)`` of the label given ``x``.

        ``conditional_encoder=True``: :math:`q(y \mid x)`. Otherwise :math:`\log p(y \mid z)`
        at :math:`z = \mathbb E_q[z \mid x]`, exact given the code.
        """
        if self.conditional_encoder:
            return self.classifier(x)
        loc, _ = self.encoder(x)
        return torch.log_softmax(self._log_joint_code_labels(loc), -1)

    def _log_joint_code_labels(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(y) + \log p(z \mid y)` for every label: ``(..., K)``."""
        return self.code_given_label().log_prob(z.unsqueeze(-2)) + self.prior.log_weights()

    def _encode_given(self, x: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        context = F.one_hot(y, self.n_clusters) if self.conditional_encoder else None
        loc, scale = self.encoder(x, context)
        return dist.Normal(loc, scale).to_event(1)

    # ------------------------------------------------------------------ Pyro model and guide
    def model(
        self,
        x: torch.Tensor | None = None,
        *,
        n_obs: int | None = None,
        subsample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""``y ~ p(y)`` (enumerated), ``z ~ p(z | y)``, ``x ~ p(x | z)`` in the plate."""
        for name, module in self.generative_modules.items():
            pyro.module(name, module)
        with self._plate(x, n_obs, subsample):
            y = pyro.sample("y", self.label_prior(), infer={"enumerate": "parallel"})
            z = pyro.sample("z", self.code_given_label(y))
            return pyro.sample(self.observed_site, self.decode(z), obs=x)

    def guide(
        self,
        x: torch.Tensor,
        *,
        n_obs: int | None = None,
        subsample: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r""":math:`q(y \mid x)\, q(z \mid x, y)` (``y`` enumerated) or :math:`q(z \mid x)`."""
        for name, module in self.inference_modules.items():
            pyro.module(name, module)
        with self._plate(x, n_obs, subsample):
            if not self.conditional_encoder:
                return pyro.sample("z", self.encode(x))
            y = pyro.sample(
                "y",
                dist.Categorical(logits=self.classifier(x)),
                infer={"enumerate": "parallel"},
            )
            return pyro.sample("z", self._encode_given(x, y))

    # ------------------------------------------------------------------ closed forms
    def log_importance_weights(self, x: torch.Tensor, num_particles: int) -> torch.Tensor:
        r"""``(S, B)`` log weights with the label summed out of both :math:`p` and :math:`q`.

        :math:`\log p(x \mid z) + \log \sum_y p(y) p(z \mid y) - \log q(z \mid x)`, where for
        the conditional encoder :math:`q(z \mid x) = \sum_y q(y \mid x) q(z \mid x, y)` and
        :math:`z \sim q(y \mid x) q(z \mid x, y)`.
        """
        if not self.conditional_encoder:
            return super().log_importance_weights(x, num_particles)
        log_qy = torch.log_softmax(self.classifier(x), -1)  # (B, K)
        y = dist.Categorical(logits=log_qy).sample((num_particles,))  # (S, B)
        labels = torch.arange(self.n_clusters, device=x.device)
        q_all = self._encode_given(x, labels[:, None])  # batch (K, B)
        loc, scale = q_all.base_dist.loc, q_all.base_dist.scale  # (K, B, L)
        rows = torch.arange(x.shape[0], device=x.device)
        z = dist.Normal(loc[y, rows], scale[y, rows]).rsample()  # (S, B, L)
        # log q(z | x) = logsumexp_y [log q(y | x) + log q(z | x, y)]
        log_qz_y = q_all.log_prob(z.unsqueeze(1))  # (S, K, B)
        log_qz = torch.logsumexp(log_qz_y + log_qy.T, 1)
        log_pz = torch.logsumexp(self._log_joint_code_labels(z), -1)
        return self.decode(z).log_prob(x) + log_pz - log_qz

    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""Per-observation ``reconstruction``, ``kl_z``, ``kl_y`` ``(B,)``, exact in ``y``.

        Conditional encoder: one :math:`z_y \sim q(z \mid x, y)` per label;
        ``reconstruction`` :math:`= \sum_y q(y|x) \log p(x|z_y)`, ``kl_z`` :math:`= \sum_y
        q(y|x) [\log q(z_y|x,y) - \log p(z_y|y)]`, ``kl_y`` :math:`= \mathrm{KL}(q(y|x) \|
        p(y))`. Otherwise, with one :math:`z \sim q(z|x)` and the exact :math:`r(y) = p(y|z)`:
        ``kl_z`` :math:`= \log q(z|x) - \sum_y r(y) \log p(z|y)`, ``kl_y`` :math:`=
        \mathrm{KL}(r \| p(y))`, which add up to :math:`\log q(z|x) - \log p(z)`.
        """
        return self._terms_and_labels(x)[0]

    def training_objective(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        r"""The objective the clustering step maximises, per observation of the batch.

        With the batch :math:`B`, the per-observation terms of :meth:`elbo_terms` and the
        label probabilities :math:`r_n(y)` they use (:math:`q(y \mid x_n)`, or the exact
        :math:`p(y \mid z_n)` without the conditional encoder),

        .. math::

            J_B = \frac1{|B|} \sum_{n \in B} \big[\mathrm{rec}_n - \beta\,
                \mathrm{KL}^{y}_n\big] - \beta \max\Big(\lambda,
                \frac1{|B|} \sum_{n \in B} \mathrm{KL}^{z}_n\Big)
                + w\, \mathrm H(\bar r_B), \qquad
            \bar r_B(y) = \frac1{|B|} \sum_{n \in B} r_n(y),

        with :math:`\lambda` = ``free_bits`` and :math:`w` = ``balance_weight``. With
        :math:`\lambda = w = 0` and :math:`\beta = 1` it is the batch's mean ELBO.

        * **Free bits / minimum information** (:math:`\lambda > 0`; Kingma et al. 2016,
          Dilokthanakul et al. 2016): the code's KL is not pushed below :math:`\lambda` nats
          per observation (its gradient is zero there), so that the code keeps at least
          that much information about the image instead of collapsing onto the components.
        * **Balance** (:math:`w > 0`): the entropy of the batch's aggregated label
          distribution, at most :math:`\log K`. :math:`\mathrm H(\bar r_B) = \log K -
          \mathrm{KL}(\bar r_B \| \mathcal U_K)`, so the term pulls the share of each
          cluster towards :math:`1/K` without pushing any single :math:`r_n` towards
          uniform (the per-observation :math:`\mathrm{KL}(r_n \| p(y))` of the ELBO does
          that, and is what lets the conditional-encoder GMVAE collapse onto one label).

        These are extra terms of the training objective only: :meth:`elbo_terms`, the
        importance-weighted bound and every reported ELBO are the model's, without them.
        """
        terms, labels = self._terms_and_labels(x)
        kl_z = terms["kl_z"].mean()
        if self.free_bits > 0:
            kl_z = torch.clamp(kl_z, min=self.free_bits)
        objective = terms["reconstruction"].mean() - beta * (kl_z + terms["kl_y"].mean())
        if self.balance_weight > 0:
            share = labels.mean(0)
            entropy = -(share * torch.log(share.clamp_min(1e-12))).sum()
            objective = objective + self.balance_weight * entropy
        return objective

    def _terms_and_labels(
        self, x: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """:meth:`elbo_terms` and the label probabilities ``(B, K)`` they were computed with."""
        log_py = self.prior.log_weights()
        if not self.conditional_encoder:
            q = self.encode(x)
            z = q.rsample()
            log_joint = self._log_joint_code_labels(z)  # (B, K)
            r = torch.softmax(log_joint, -1)
            log_pz_y = log_joint - log_py
            kl_z = q.log_prob(z) - (r * log_pz_y).sum(-1)
            kl_y = (r * (torch.log_softmax(log_joint, -1) - log_py)).sum(-1)
            terms = {"reconstruction": self.decode(z).log_prob(x), "kl_z": kl_z, "kl_y": kl_y}
            return terms, r
        log_qy = torch.log_softmax(self.classifier(x), -1)  # (B, K)
        qy = log_qy.exp()
        labels = torch.arange(self.n_clusters, device=x.device)
        q = self._encode_given(x, labels[:, None])  # batch (K, B)
        z = q.rsample()  # (K, B, L)
        log_pz_y = self.code_given_label(labels[:, None]).log_prob(z)  # (K, B)
        rec = (qy.T * self.decode(z).log_prob(x)).sum(0)
        kl_z = (qy.T * (q.log_prob(z) - log_pz_y)).sum(0)
        kl_y = (qy * (log_qy - log_py)).sum(-1)
        return {"reconstruction": rec, "kl_z": kl_z, "kl_y": kl_y}, qy
