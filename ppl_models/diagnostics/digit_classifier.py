r"""A small digit classifier trained by the project: the judge of generated images.

:func:`train_digit_classifier` fits a :class:`DigitClassifier` (a two-layer convolutional
network) on labelled training images, e.g. the MNIST training set or the training split of
scikit-learn's bundled 8x8 digits; :func:`classifier_accuracy` scores it on held-out images.
:mod:`ppl_models.diagnostics.sample_quality` reads its class probabilities and its
penultimate features to measure sets of generated images, so that every generator of the
collection is measured on one scale without downloading a pretrained network (the role the
Inception network plays for natural images in the Inception score and FID; Salimans et al.
2016, Heusel et al. 2017).

Architecture, for square images of side :math:`s` (8 or 28) with pixels in [0, 1]:

.. code-block:: text

    conv 3x3 (1 -> c1), ReLU, max-pool 2x2          s x s -> s/2 x s/2
    conv 3x3 (c1 -> c2), ReLU, adaptive avg-pool    -> 4 x 4
    linear (16 c2 -> F), ReLU                       the penultimate features f(x), F wide
    linear (F -> K)                                 logits of the K classes

with ``channels = (c1, c2) = (16, 32)``, ``feature_dim = F = 64`` by default. The adaptive pooling
makes one architecture serve 8x8 and 28x28 images; a classifier remembers the side it was trained
on and refuses images of another size.

Saved by :func:`save_digit_classifier` as a dict of tensors and plain values, read back by
:func:`load_digit_classifier` with ``torch.load(..., weights_only=True)`` (no code in the file
runs); a file that is not such a dict is a ``ValueError`` naming it.

References
----------
LeCun, Y., Bottou, L., Bengio, Y. & Haffner, P. (1998). Gradient-based learning applied to
document recognition. Proc. IEEE.
Heusel, M. et al. (2017). GANs trained by a two time-scale update rule converge to a local
Nash equilibrium. NeurIPS (the Fréchet distance on a classifier's features).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ppl_models._shared.checks import check_float, check_int
from ppl_models._shared.files import load_tensor_file

__all__ = [
    "FILE_FORMAT",
    "DigitClassifier",
    "classifier_accuracy",
    "load_digit_classifier",
    "save_digit_classifier",
    "train_digit_classifier",
]

#: The ``format`` entry of a saved classifier.
FILE_FORMAT = "ppl_models.digit_classifier/1"


def _side(n_pixels: int) -> int:
    side = math.isqrt(int(n_pixels))
    if side * side != n_pixels or side < 2:
        raise ValueError(f"the digit classifier takes square images; got {n_pixels} pixels")
    return side


class DigitClassifier(nn.Module):
    """A small CNN over ``side x side`` images (see the module docstring).

    Parameters
    ----------
    side : int
        Side of the square images (8 for the bundled digits, 28 for MNIST).
    n_classes : int
        K, number of classes (10 digits).
    channels : tuple of two int
        Feature maps of the two convolutions.
    feature_dim : int
        F, width of the penultimate layer (the features of the Fréchet distance).
    """

    def __init__(self, side: int, n_classes: int = 10, *, channels: tuple[int, int] = (16, 32),
                 feature_dim: int = 64) -> None:
        super().__init__()
        self.side = check_int(side, "side", minimum=2)
        self.n_classes = check_int(n_classes, "n_classes", minimum=2)
        channels = tuple(check_int(c, f"channels[{i}]") for i, c in enumerate(channels))
        if len(channels) != 2:
            raise ValueError(f"channels must hold 2 widths; got {list(channels)}")
        self.channels: tuple[int, int] = (channels[0], channels[1])
        self.feature_dim = check_int(feature_dim, "feature_dim")
        c1, c2 = self.channels
        self.trunk = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(16 * c2, self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, self.n_classes)

    def config(self) -> dict[str, Any]:
        """Constructor arguments: ``DigitClassifier(**config())`` rebuilds the structure."""
        return {"side": self.side, "n_classes": self.n_classes, "channels": list(self.channels),
                "feature_dim": self.feature_dim}

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError("images must be a 2-D tensor (N, side * side); got "
                             + (f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
                                else type(x).__name__))
        if x.shape[1] != self.side * self.side:
            raise ValueError(
                f"this classifier was trained on {self.side}x{self.side} images; got images of "
                f"{x.shape[1]} pixels"
            )
        return x.to(self.head.weight.dtype).reshape(-1, 1, self.side, self.side)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features :math:`f(x)`, shape ``(N, feature_dim)``."""
        return self.trunk(self._images(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape ``(N, n_classes)``."""
        return self.head(self.features(x))


def _check_training_set(images: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(images, torch.Tensor) or images.ndim != 2 or len(images) == 0:
        raise ValueError("images must be a non-empty 2-D tensor (N, side * side)")
    if not images.is_floating_point() or images.min() < 0 or images.max() > 1:
        raise ValueError("images must be floating-point pixels in [0, 1]")
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(images),):
        raise ValueError(f"labels must be a tensor of shape ({len(images)},), one per image")
    if labels.is_floating_point() or labels.min() < 0:
        raise ValueError("labels must be non-negative integers (class indices)")
    return images, labels.long()


def train_digit_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 20,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    n_classes: int = 10,
    channels: tuple[int, int] = (16, 32),
    feature_dim: int = 64,
) -> DigitClassifier:
    """Train a :class:`DigitClassifier` by Adam on the cross-entropy.

    Parameters
    ----------
    images : Tensor (N, side * side)
        Training images, pixels in [0, 1], square.
    labels : Tensor (N,)
        Their classes, integers in ``0 .. n_classes - 1``.
    epochs : int
        Passes over the training set (20 for the 1500 bundled digits, which reach 0.91 to
        0.94 accuracy on their 297 test images over seeds 0-3; 2 for MNIST).
    seed : int
        Seeds the initial weights and the shuffles; the global RNG is left as it was.
    batch_size, lr : int, float
        Minibatch size and Adam's learning rate.
    n_classes, channels, feature_dim
        See :class:`DigitClassifier`.

    Returns
    -------
    DigitClassifier
        In evaluation mode.

    Raises
    ------
    ValueError
        Images not a 2-D tensor of square images in [0, 1], labels of the wrong shape or out
        of ``0 .. n_classes - 1``, a bad setting.
    """
    images, labels = _check_training_set(images, labels)
    epochs = check_int(epochs, "epochs")
    seed = check_int(seed, "seed", minimum=0)
    batch_size = check_int(batch_size, "batch_size")
    lr = check_float(lr, "lr", minimum=0, strict_minimum=True)
    if int(labels.max()) >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}; got {int(labels.max())}")
    side = _side(images.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = DigitClassifier(side, n_classes, channels=channels, feature_dim=feature_dim)
    images = images.to(classifier.head.weight.dtype)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    classifier.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(classifier(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    return classifier.eval()


def classifier_accuracy(classifier: DigitClassifier, images: torch.Tensor,
                        labels: torch.Tensor, *, batch_size: int = 2000) -> float:
    """Share of ``images`` whose most probable class is their label."""
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(images),):
        raise ValueError(f"labels must be a tensor of shape ({len(images)},), one per image")
    with torch.no_grad():
        predicted = torch.cat([classifier(images[i:i + batch_size]).argmax(-1)
                               for i in range(0, len(images), batch_size)])
    return float((predicted == labels.to(predicted.device)).double().mean())


def save_digit_classifier(classifier: DigitClassifier, path: str | os.PathLike[str], *,
                          info: dict[str, float | int | str] | None = None) -> Path:
    """Write ``classifier`` (configuration, weights and ``info``, e.g. its test accuracy) to
    ``path`` atomically (a temporary file, then ``os.replace``); returns the path."""
    path = Path(path)
    state = {"format": FILE_FORMAT, "config": classifier.config(),
             "state_dict": classifier.state_dict(), "info": dict(info or {})}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return path


def load_digit_classifier(path: str | os.PathLike[str]
                          ) -> tuple[DigitClassifier, dict[str, Any]]:
    """Read a classifier written by :func:`save_digit_classifier` (``weights_only=True``).

    Returns
    -------
    classifier : DigitClassifier
        In evaluation mode.
    info : dict
        What was saved beside it.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Naming the file: truncated or not a tensor file, not a saved digit classifier, or
        weights that do not fit its configuration.
    """
    path = Path(path).expanduser()
    state = load_tensor_file(path, "digit classifier", "save_digit_classifier",
                             missing="no digit classifier")
    if not isinstance(state, dict) or state.get("format") != FILE_FORMAT:
        raise ValueError(f"corrupt digit classifier {path}: not written by "
                         f"save_digit_classifier (no format {FILE_FORMAT!r})")
    config, weights, info = state.get("config"), state.get("state_dict"), state.get("info")
    if not isinstance(config, dict) or not isinstance(weights, dict) or not isinstance(info, dict):
        raise ValueError(f"corrupt digit classifier {path}: config, state_dict or info missing")
    try:
        classifier = DigitClassifier(**config)
        classifier.load_state_dict(weights)
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"corrupt digit classifier {path}: {first}") from None
    return classifier.eval(), info
