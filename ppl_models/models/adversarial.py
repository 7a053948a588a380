r"""Pieces shared by the adversarial families: the discriminator network, sampled priors,
kernels and the unbiased MMD estimator.

The models themselves are in :mod:`ppl_models.models.gan` (GAN, DCGAN),
:mod:`ppl_models.models.infogan` (InfoGAN) and
:mod:`ppl_models.models.adversarial_autoencoder` (adversarial and Wasserstein autoencoders);
the training step is :class:`ppl_models.infer.trainer.steps.AdversarialStep`.

**MMD.** For a kernel :math:`k` and samples :math:`x_{1:n} \sim P`, :math:`y_{1:m} \sim Q`,

.. math::

    \widehat{\mathrm{MMD}}^2_u = \frac{1}{n(n-1)} \sum_{i \ne j} k(x_i, x_j)
        + \frac{1}{m(m-1)} \sum_{i \ne j} k(y_i, y_j) - \frac{2}{nm} \sum_{i, j} k(x_i, y_j)

is an unbiased estimator of :math:`\mathrm{MMD}^2(P, Q) = \mathbb E k(x, x') + \mathbb E
k(y, y') - 2 \mathbb E k(x, y)` (Gretton et al. 2012, Lemma 6): the diagonal terms are left
out. The Wasserstein autoencoder uses the inverse multiquadratic kernel
:math:`k(x, y) = C / (C + \|x - y\|^2)`, summed over the scales
:math:`C \in \{0.1, 0.2, 0.5, 1, 2, 5, 10\} \cdot 2 L \sigma_z^2` (Tolstikhin et al. 2018,
section 4, with :math:`L` the code size and :math:`\sigma_z^2` the prior's variance); the
Gaussian kernel :math:`\exp(-\|x - y\|^2 / (2 h^2))` is offered beside it (its MMD between
Gaussians has a closed form).

References
----------
Gretton, A., Borgwardt, K. M., Rasch, M. J., Schölkopf, B. & Smola, A. (2012). A kernel
two-sample test. JMLR 13.
Tolstikhin, I., Bousquet, O., Gelly, S. & Schölkopf, B. (2018). Wasserstein auto-encoders.
ICLR.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import nn

from ppl_models._shared.checks import check_float
from ppl_models.nn import IMAGE_SHAPE, MLPTrunk, check_image_dim

__all__ = [
    "IMQ_SCALES",
    "KERNELS",
    "ConvDiscriminator",
    "ConvGenerator",
    "Discriminator",
    "check_sampled_prior",
    "gaussian_kernel",
    "imq_kernel",
    "mmd_unbiased",
    "observation_plate",
]

#: Multiples of the base scale :math:`2 L \sigma_z^2` the IMQ kernel is summed over
#: (Tolstikhin et al. 2018).
IMQ_SCALES: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(n, m)`` matrix of :math:`\\|a_i - b_j\\|^2` (exact differences, no cancellation)."""
    return (a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1)


def imq_kernel(scale: float) -> Kernel:
    r"""Inverse multiquadratic kernel :math:`\sum_s C_s / (C_s + \|x - y\|^2)`,
    :math:`C_s = s \cdot` ``scale`` for ``s`` in :data:`IMQ_SCALES` (``scale`` is
    :math:`2 L \sigma_z^2` in the paper)."""
    scale = check_float(scale, "scale", minimum=0, strict_minimum=True)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = _squared_distances(a, b)
        return sum(s * scale / (s * scale + d2) for s in IMQ_SCALES)

    return kernel


def gaussian_kernel(bandwidth: float) -> Kernel:
    r"""Gaussian kernel :math:`\exp(-\|x - y\|^2 / (2 h^2))` with bandwidth ``h``."""
    bandwidth = check_float(bandwidth, "bandwidth", minimum=0, strict_minimum=True)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-_squared_distances(a, b) / (2 * bandwidth**2))

    return kernel


#: Kernels of the MMD penalty by name: name -> builder from the scale (IMQ: :math:`2 L
#: \sigma_z^2`; Gaussian: the bandwidth).
KERNELS: dict[str, Callable[[float], Kernel]] = {"imq": imq_kernel, "gaussian": gaussian_kernel}


def mmd_unbiased(x: torch.Tensor, y: torch.Tensor, kernel: Kernel) -> torch.Tensor:
    r"""The unbiased estimate :math:`\widehat{\mathrm{MMD}}^2_u` of ``x`` ``(n, L)`` against
    ``y`` ``(m, L)`` (module docstring); ``n, m >= 2``. It may be negative."""
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 draws on each side; got {n} and {m}")
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2 * kxy.mean()


class Discriminator(nn.Module):
    """``(..., input_dim) -> (...)`` logits: an MLP trunk and a linear head to one unit.

    Leaky ReLU hidden units by default (Radford et al. 2016 use them in the discriminator).
    """

    def __init__(self, input_dim: int, hidden: Sequence[int] | int = (64,),
                 activation: str = "leaky_relu") -> None:
        super().__init__()
        hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        if activation == "leaky_relu":
            layers: list[nn.Module] = []
            width = input_dim
            for h in hidden:
                layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
                width = h
            self.trunk: nn.Module = nn.Sequential(*layers)
            feature_dim = width
        else:
            trunk = MLPTrunk(input_dim, hidden, activation)
            self.trunk, feature_dim = trunk, trunk.feature_dim
        self.head = nn.Linear(feature_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).squeeze(-1)


def upsample_to_image(c1: int, c2: int) -> list[nn.Module]:
    """The layers from ``c2 * 7 * 7`` features to one 28 x 28 image's logits: two stride-2
    4 x 4 transposed convolutions (``c2 -> c1 -> 1`` channels, batch norm and ReLU between),
    as in Radford et al. (2016) and Chen et al. (2016, appendix C.1)."""
    return [
        nn.Unflatten(1, (c2, 7, 7)),
        nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.ConvTranspose2d(c1, IMAGE_SHAPE[0], 4, stride=2, padding=1),
    ]


def downsample_image(c1: int, c2: int) -> list[nn.Module]:
    """The layers from one ``1 x 28 x 28`` image to ``c2 * 7 * 7`` features: two stride-2
    4 x 4 convolutions (``1 -> c1 -> c2`` channels) with leaky ReLU (slope 0.2), batch norm on
    the second only, then flattened, as in Radford et al. (2016) and Chen et al. (2016,
    appendix C.1)."""
    return [
        nn.Conv2d(IMAGE_SHAPE[0], c1, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1),
        nn.BatchNorm2d(c2),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
    ]


class ConvGenerator(nn.Module):
    """DCGAN generator for ``1 x 28 x 28`` images: ``z (..., L) -> (..., 784)`` pre-sigmoid.

    A dense layer to ``c2 x 7 x 7`` maps, then two stride-2 transposed convolutions
    (4x4 kernels: 7 -> 14 -> 28), batch normalisation and ReLU after every layer but the last
    (Radford et al. 2016, section 3: no pooling, no dense hidden layers beyond the projection).
    """

    def __init__(self, latent_dim: int, output_dim: int = 784,
                 channels: tuple[int, int] = (64, 128)) -> None:
        super().__init__()
        check_image_dim(output_dim)
        c1, c2 = channels
        self.output_dim = output_dim
        self.net = nn.Sequential(
            nn.Linear(latent_dim, c2 * 7 * 7),
            nn.BatchNorm1d(c2 * 7 * 7),
            nn.ReLU(),
            *upsample_to_image(c1, c2),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        out = self.net(z.reshape(-1, z.shape[-1]))
        return out.reshape(*batch, self.output_dim)


class ConvDiscriminator(nn.Module):
    """DCGAN discriminator for ``1 x 28 x 28`` images: ``x (..., 784) -> (...)`` logits.

    Two stride-2 convolutions (28 -> 14 -> 7) with leaky ReLU (slope 0.2), batch normalisation
    on the second (none on the input layer), then a linear unit (Radford et al. 2016).
    :meth:`features` gives the flattened last feature maps.
    """

    def __init__(self, input_dim: int = 784, channels: tuple[int, int] = (64, 128)) -> None:
        super().__init__()
        check_image_dim(input_dim)
        c1, c2 = channels
        self.trunk = nn.Sequential(*downsample_image(c1, c2))
        self.feature_dim = c2 * 7 * 7
        self.head = nn.Linear(self.feature_dim, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        return self.trunk(x.reshape(-1, *IMAGE_SHAPE)).reshape(*batch, self.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(-1)


def check_sampled_prior(
    prior: torch.distributions.Distribution, latent_dim: int
) -> torch.distributions.Distribution:
    """A prior over codes of size ``latent_dim`` that can ``sample``: event shape ``(L,)``.

    A distribution with batch shape ``(L,)`` and event shape ``()`` (independent coordinates,
    e.g. ``Uniform(-1 * ones(L), ones(L))``) is declared as one event of size ``L``.
    """
    if not isinstance(prior, torch.distributions.Distribution):
        raise ValueError(
            f"prior must be a Pyro (torch) distribution with sample(); got {type(prior).__name__}"
        )
    if prior.event_shape == () and prior.batch_shape == (latent_dim,):
        prior = prior.to_event(1) if isinstance(prior, TorchDistributionMixin) else (
            torch.distributions.Independent(prior, 1))
    if prior.batch_shape != () or prior.event_shape != (latent_dim,):
        raise ValueError(
            f"prior must draw codes of size latent_dim={latent_dim} (batch shape (), event "
            f"shape ({latent_dim},)); got batch {tuple(prior.batch_shape)}, event "
            f"{tuple(prior.event_shape)}"
        )
    return prior


def observation_plate(
    name: str, x: torch.Tensor | None, n_obs: int | None, subsample: torch.Tensor | None
) -> pyro.plate:
    """The per-observation plate: the batch's rows of ``n_obs`` (``subsample``), all of ``x``,
    or ``n_obs`` simulated rows when ``x`` is None."""
    if subsample is not None:
        if n_obs is None:
            raise ValueError("subsample needs n_obs, the size of the full data")
        return pyro.plate(name, int(n_obs), subsample=subsample)
    if x is None:
        if n_obs is None:
            raise ValueError("simulating needs n_obs when x is None")
        return pyro.plate(name, int(n_obs))
    if n_obs is not None and int(n_obs) != x.shape[0]:
        raise ValueError(
            f"n_obs={n_obs} but x has {x.shape[0]} rows: pass subsample=the rows' indices in "
            "the full data for a minibatch"
        )
    return pyro.plate(name, x.shape[0])
