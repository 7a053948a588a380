r"""Encoder and decoder networks shared by every model of the VAE family.

One place for the networks, so no variant keeps its own copy:

* a *trunk* turns an observation ``x`` (flattened, ``(..., D)``) into features: an MLP, or a
  small convolutional stack for ``1 x 28 x 28`` images (:data:`TRUNKS`, a registry);
* :class:`GaussianEncoder` puts a Gaussian head on a trunk: ``x -> (loc, scale)`` of
  :math:`q(z \mid x) = \mathcal N(\mathrm{loc}, \mathrm{diag}(\mathrm{scale}^2))`, optionally
  conditioned on a context vector (the one-hot cluster label of a GMVAE's
  :math:`q(z \mid x, y)`);
* :class:`Classifier` puts a logits head on a trunk (a GMVAE's :math:`q(y \mid x)`);
* a *decoder* (:data:`DECODERS`) maps ``z`` to the likelihood's natural parameter per pixel
  (Bernoulli logits, Gaussian mean, ...).

Every network accepts any number of leading batch dimensions (particles, enumerated labels,
data), as Pyro's vectorised particles and parallel enumeration need. An MLP with
``hidden=()`` is affine, which gives the linear-Gaussian VAE (probabilistic PCA, Tipping &
Bishop 1999) its linear encoder and decoder.

References
----------
Kingma, D. P. & Welling, M. (2014). Auto-encoding variational Bayes. ICLR.
Rezende, D. J., Mohamed, S. & Wierstra, D. (2014). Stochastic backpropagation and approximate
inference in deep generative models. ICML.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ppl_models._shared.checks import check_int

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "DECODERS",
    "IMAGE_SHAPE",
    "TRUNKS",
    "Classifier",
    "ConvDecoder",
    "ConvTrunk",
    "GaussianEncoder",
    "MLPDecoder",
    "MLPTrunk",
    "check_architecture",
    "make_classifier",
    "make_decoder",
    "make_encoder",
]

#: The image shape (channels, height, width) the convolutional networks are built for.
IMAGE_SHAPE: tuple[int, int, int] = (1, 28, 28)

#: Registry of hidden-layer nonlinearities.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
}

#: Smallest scale an encoder returns (keeps log q(z|x) finite).
MIN_SCALE = 1e-4


def _activation(name: str) -> nn.Module:
    builder = ACTIVATIONS.get(name)
    if builder is None:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return builder()


def _hidden(hidden: Sequence[int] | int) -> tuple[int, ...]:
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    return tuple(check_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))


def _mlp(in_dim: int, hidden: tuple[int, ...], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), _activation(activation)]
        in_dim = width
    return nn.Sequential(*layers)


class MLPTrunk(nn.Module):
    """``x (..., D) -> features (..., F)``: affine layers with a nonlinearity after each.

    With ``hidden=()`` it is the identity (``F = D``), so a head on it is affine in ``x``.
    """

    def __init__(
        self, input_dim: int, hidden: Sequence[int] | int = (256,), activation: str = "relu"
    ) -> None:
        super().__init__()
        hidden = _hidden(hidden)
        self.net = _mlp(input_dim, hidden, activation)
        self.feature_dim = hidden[-1] if hidden else input_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvTrunk(nn.Module):
    """``x (..., 784) -> features (..., F)`` for ``1 x 28 x 28`` images.

    Two stride-2 convolutions (4x4 kernels: 28 -> 14 -> 7) with ``channels`` maps, then a
    dense layer of width ``hidden[-1]``.
    """

    def __init__(
        self,
        input_dim: int,
        hidden: Sequence[int] | int = (256,),
        activation: str = "relu",
        channels: tuple[int, int] = (32, 64),
    ) -> None:
        super().__init__()
        check_image_dim(input_dim)
        hidden = _hidden(hidden) or (256,)
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(IMAGE_SHAPE[0], c1, 4, stride=2, padding=1),
            _activation(activation),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            _activation(activation),
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, hidden[-1]),
            _activation(activation),
        )
        self.feature_dim = hidden[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        out = self.net(x.reshape(-1, *IMAGE_SHAPE))
        return out.reshape(*batch, self.feature_dim)


def check_image_dim(input_dim: int) -> None:
    """Refuse data that are not flattened ``1 x 28 x 28`` images for the conv networks."""
    expected = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    if input_dim != expected:
        raise ValueError(
            f"the conv networks take 1x28x28 images (input_dim {expected}); got input_dim "
            f"{input_dim}: use architecture='mlp' for other sizes"
        )


#: Registry of trunks: name -> class(input_dim, hidden, activation).
TRUNKS: dict[str, type[nn.Module]] = {"mlp": MLPTrunk, "conv": ConvTrunk}


class GaussianEncoder(nn.Module):
    r"""A diagonal Gaussian :math:`q(z \mid x[, c])`: ``x -> (loc, scale)``.

    ``loc, s = W [f(x); c] + b`` with :math:`f` the trunk and ``scale = softplus(s) + 1e-4``.
    The context ``c`` (e.g. a one-hot label of shape ``(K, 1, K)`` under parallel
    enumeration) broadcasts against the features, so the trunk runs once per observation.
    """

    def __init__(self, trunk: nn.Module, latent_dim: int, context_dim: int = 0) -> None:
        super().__init__()
        self.trunk = trunk
        self.latent_dim = latent_dim
        self.context_dim = context_dim
        self.head = nn.Linear(trunk.feature_dim + context_dim, 2 * latent_dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        if context is not None:
            shape = torch.broadcast_shapes(features.shape[:-1], context.shape[:-1])
            features = torch.cat(
                [features.expand(*shape, -1), context.to(features.dtype).expand(*shape, -1)], -1
            )
        loc, raw = self.head(features).chunk(2, dim=-1)
        return loc, F.softplus(raw) + MIN_SCALE


class Classifier(nn.Module):
    r"""Logits of a categorical :math:`q(y \mid x)` over ``n_classes``: a linear head on a trunk."""

    def __init__(self, trunk: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(trunk.feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class MLPDecoder(nn.Module):
    """``z (..., L) -> (..., D)``: the likelihood's per-pixel parameter (logits, mean)."""

    def __init__(
        self,
        latent_dim: int,
        output_dim: int,
        hidden: Sequence[int] | int = (256,),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        hidden = _hidden(hidden)
        self.net = nn.Sequential(
            *_mlp(latent_dim, tuple(reversed(hidden)), activation),
            nn.Linear(hidden[0] if hidden else latent_dim, output_dim),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ConvDecoder(nn.Module):
    """``z (..., L) -> (..., 784)``: dense layers to ``64 x 7 x 7``, two transposed convs."""

    def __init__(
        self,
        latent_dim: int,
        output_dim: int,
        hidden: Sequence[int] | int = (256,),
        activation: str = "relu",
        channels: tuple[int, int] = (32, 64),
    ) -> None:
        super().__init__()
        check_image_dim(output_dim)
        hidden = _hidden(hidden) or (256,)
        c1, c2 = channels
        self.output_dim = output_dim
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden[-1]),
            _activation(activation),
            nn.Linear(hidden[-1], c2 * 7 * 7),
            _activation(activation),
            nn.Unflatten(1, (c2, 7, 7)),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            _activation(activation),
            nn.ConvTranspose2d(c1, IMAGE_SHAPE[0], 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        out = self.net(z.reshape(-1, z.shape[-1]))
        return out.reshape(*batch, self.output_dim)


#: Registry of decoders: name -> class(latent_dim, output_dim, hidden, activation).
DECODERS: dict[str, type[nn.Module]] = {"mlp": MLPDecoder, "conv": ConvDecoder}

#: The architectures a model can name (each has a trunk and a decoder).
ARCHITECTURES: tuple[str, ...] = tuple(TRUNKS)


def check_architecture(architecture: str, input_dim: int) -> None:
    """Refuse an unknown architecture, or data of the wrong size for it."""
    if architecture not in TRUNKS:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {sorted(TRUNKS)}"
        )
    if architecture == "conv":
        check_image_dim(input_dim)


def make_encoder(
    architecture: str,
    input_dim: int,
    latent_dim: int,
    hidden: Sequence[int] | int = (256,),
    activation: str = "relu",
    context_dim: int = 0,
) -> GaussianEncoder:
    """A :class:`GaussianEncoder` on the named trunk."""
    check_architecture(architecture, input_dim)
    return GaussianEncoder(TRUNKS[architecture](input_dim, hidden, activation), latent_dim,
                           context_dim)


def make_classifier(
    architecture: str,
    input_dim: int,
    n_classes: int,
    hidden: Sequence[int] | int = (256,),
    activation: str = "relu",
) -> Classifier:
    """A :class:`Classifier` on the named trunk."""
    check_architecture(architecture, input_dim)
    return Classifier(TRUNKS[architecture](input_dim, hidden, activation), n_classes)


def make_decoder(
    architecture: str,
    latent_dim: int,
    output_dim: int,
    hidden: Sequence[int] | int = (256,),
    activation: str = "relu",
) -> nn.Module:
    """The named decoder."""
    check_architecture(architecture, output_dim)
    return DECODERS[architecture](latent_dim, output_dim, hidden, activation)
