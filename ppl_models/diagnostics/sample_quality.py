r"""Sample-quality measures of a set of generated images, read through a digit classifier.

Given a classifier :math:`p(c \mid x)` with penultimate features :math:`f(x)`
(:class:`~ppl_models.diagnostics.digit_classifier.DigitClassifier`, trained by the project), a
set of generated images :math:`x_1, \dots, x_n` and a set of real test images,
:func:`sample_quality` reports:

* **confident share**: the share of generated images with
  :math:`\max_c p(c \mid x_i) \ge \tau` (``threshold`` :math:`\tau`, default 0.9): images the
  classifier reads as one clear digit;
* **class shares** :math:`\hat\pi_c = \frac1n \#\{i : \arg\max_{c'} p(c' \mid x_i) = c\}`,
  the histogram of the most probable class over *all* generated images (confident or not);
* **classes covered**: the number of classes with :math:`\hat\pi_c \ge \epsilon`
  (``min_share`` :math:`\epsilon`, default 0.01, i.e. at least 1% of the generated images),
  an integer in :math:`0 .. K`; a generator that drops modes covers fewer than :math:`K = 10`;
* **KL from uniform**: :math:`\mathrm{KL}(\hat\pi \,\|\, \mathcal U_K) = \sum_c \hat\pi_c
  \log(K \hat\pi_c) = \log K - H(\hat\pi)` in nats (:math:`0 \log 0 = 0`): 0 when every
  class is equally frequent, :math:`\log K` when all images fall in one class (for test sets
  whose classes are balanced, as MNIST's nearly are);
* **Fréchet distance** between Gaussians fitted to the features of generated and of test
  images (Heusel et al. 2017, with the project's classifier in place of Inception),

  .. math::

      d^2 = \|\mu_g - \mu_r\|^2 + \operatorname{tr}\bigl(\Sigma_g + \Sigma_r
            - 2 (\Sigma_r^{1/2} \Sigma_g \Sigma_r^{1/2})^{1/2}\bigr),

  the squared 2-Wasserstein distance between :math:`\mathcal N(\mu_g, \Sigma_g)` and
  :math:`\mathcal N(\mu_r, \Sigma_r)` (Dowson & Landau 1982). The trace of the matrix square
  root is computed from eigenvalues of symmetric matrices (:func:`frechet_distance`), which
  stays real and needs no ``sqrtm`` of a non-symmetric product. Sample covariances use
  :math:`n - 1`; the estimate is biased upwards by :math:`O(F / n)` for :math:`F` features
  and :math:`n` images, so compare distances computed with the same numbers of images.

References
----------
Salimans, T. et al. (2016). Improved techniques for training GANs. NeurIPS (classifier-based
scores).
Heusel, M. et al. (2017). GANs trained by a two time-scale update rule converge to a local
Nash equilibrium. NeurIPS (the Fréchet distance, FID).
Dowson, D. C. & Landau, B. V. (1982). The Fréchet distance between multivariate normal
distributions. J. Multivariate Anal. 12, 450-455.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ppl_models._shared.checks import check_float
from ppl_models.diagnostics.digit_classifier import DigitClassifier
from ppl_models.models.protocols import AdversarialModel, AmortizedModel

__all__ = [
    "CONFIDENCE_THRESHOLD",
    "MIN_CLASS_SHARE",
    "SampleQuality",
    "class_shares",
    "classes_covered",
    "frechet_distance",
    "gaussian_frechet_distance",
    "generated_images",
    "kl_from_uniform",
    "sample_quality",
]

#: Default :math:`\tau`: an image counts as confidently classified when its most probable class
#: has probability at least this.
CONFIDENCE_THRESHOLD = 0.9

#: Default :math:`\epsilon`: a class counts as covered when at least this share of the
#: generated images has it as most probable class.
MIN_CLASS_SHARE = 0.01


@dataclass(frozen=True)
class SampleQuality:
    """The measures of :func:`sample_quality` (see the module docstring).

    Attributes
    ----------
    confident_share : float
        Share of generated images with :math:`\\max_c p(c \\mid x) \\ge` ``threshold``.
    classes_covered : int
        Classes with share at least ``min_share``, in ``0 .. n_classes``.
    kl_from_uniform : float
        :math:`\\mathrm{KL}(\\hat\\pi \\| \\mathcal U)` in nats, in :math:`[0, \\log K]`.
    frechet_distance : float
        Squared Fréchet distance between the feature Gaussians of generated and test images.
    class_shares : tuple of float
        :math:`\\hat\\pi_c`, ``n_classes`` entries summing to 1.
    n_generated, n_reference : int
        Numbers of generated and of test images.
    threshold, min_share : float
        The :math:`\\tau` and :math:`\\epsilon` used.
    """

    confident_share: float
    classes_covered: int
    kl_from_uniform: float
    frechet_distance: float
    class_shares: tuple[float, ...]
    n_generated: int
    n_reference: int
    threshold: float
    min_share: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``class_shares`` as a list)."""
        values = asdict(self)
        values["class_shares"] = list(self.class_shares)
        return values


# ------------------------------------------------------------------ class histogram measures
def class_shares(predicted: Any, n_classes: int) -> np.ndarray:
    r""":math:`\hat\pi_c`, the share of each class ``0 .. n_classes - 1`` among ``predicted``
    (integer class indices, e.g. the argmax of a classifier's probabilities)."""
    predicted = np.asarray(predicted)
    if predicted.ndim != 1 or predicted.size == 0:
        raise ValueError("predicted classes must be a non-empty 1-D array")
    if predicted.min() < 0 or predicted.max() >= n_classes:
        raise ValueError(f"predicted classes must lie in 0..{n_classes - 1}")
    return np.bincount(predicted, minlength=n_classes) / predicted.size


def _check_shares(shares: Any) -> np.ndarray:
    shares = np.asarray(shares, dtype=float)
    if shares.ndim != 1 or shares.size == 0 or (shares < 0).any() or not math.isclose(
            shares.sum(), 1.0, abs_tol=1e-9):
        raise ValueError("class shares must be a 1-D array of non-negative numbers summing to 1")
    return shares


def classes_covered(shares: Any, min_share: float = MIN_CLASS_SHARE) -> int:
    r"""Number of classes whose share is at least ``min_share`` (:math:`\epsilon`)."""
    min_share = check_float(min_share, "min_share", minimum=0, maximum=1, strict_minimum=True)
    return int((_check_shares(shares) >= min_share).sum())


def kl_from_uniform(shares: Any) -> float:
    r""":math:`\sum_c \hat\pi_c \log(K \hat\pi_c)` in nats, with :math:`0 \log 0 = 0`."""
    shares = _check_shares(shares)
    present = shares[shares > 0]
    return float(np.sum(present * np.log(shares.size * present)))


# ------------------------------------------------------------------ Fréchet distance
def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative
    eigenvalues of round-off clipped to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def gaussian_frechet_distance(mean_a: Any, cov_a: Any, mean_b: Any, cov_b: Any) -> float:
    r"""Squared Fréchet (2-Wasserstein) distance between :math:`\mathcal N(\mu_a, \Sigma_a)`
    and :math:`\mathcal N(\mu_b, \Sigma_b)`:
    :math:`\|\mu_a - \mu_b\|^2 + \operatorname{tr}(\Sigma_a + \Sigma_b - 2 (\Sigma_b^{1/2}
    \Sigma_a \Sigma_b^{1/2})^{1/2})`, with
    :math:`\operatorname{tr}(\cdot)^{1/2} = \sum_i \sqrt{\lambda_i}` over the eigenvalues of the
    symmetric matrix :math:`\Sigma_b^{1/2} \Sigma_a \Sigma_b^{1/2}` (clipped at 0). Clipped
    below at 0 against round-off."""
    mean_a, mean_b = np.asarray(mean_a, float), np.asarray(mean_b, float)
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, float)), np.atleast_2d(np.asarray(cov_b, float))
    d = mean_a.shape[0]
    if mean_a.shape != (d,) or mean_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (
            d, d):
        raise ValueError(f"means must be (d,) and covariances (d, d) with one d; got "
                         f"{mean_a.shape}, {cov_a.shape}, {mean_b.shape}, {cov_b.shape}")
    root_b = _sqrt_psd(cov_b)
    inner = root_b @ cov_a @ root_b
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    value = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return float(max(value, 0.0))


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Squared Fréchet distance between Gaussians fitted (mean, covariance with ``n - 1``) to
    two sets of feature vectors, ``(n_a, F)`` and ``(n_b, F)``, each with at least 2 rows."""
    a, b = np.asarray(features_a, float), np.asarray(features_b, float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"features must be two 2-D arrays of at least 2 rows with the same "
                         f"number of columns; got shapes {a.shape} and {b.shape}")
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False),
                                     b.mean(0), np.cov(b, rowvar=False))


# ------------------------------------------------------------------ a model's images
def generated_images(model: AdversarialModel | AmortizedModel, n: int, *, seed: int = 0
                     ) -> torch.Tensor:
    r"""``n`` images of a fitted generator, pixels clamped to [0, 1], drawn under
    ``torch.manual_seed(seed)`` in a forked RNG (the global RNG is left as it was).

    An adversarial model gives :math:`G(z)`, :math:`z \sim p(z)` (its ``generate``); an
    amortized model (the VAE family) gives the decoder means :math:`\mathbb E[x \mid z]`,
    :math:`z \sim p(z)`, the images of its sample grid (a draw of every pixel from a Bernoulli
    likelihood would add salt-and-pepper noise that no generator of grey levels has). Networks
    are used in their current mode: call ``model.eval()`` first.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(model, AdversarialModel):
            images = model.generate(n)
        elif isinstance(model, AmortizedModel):
            images = model.decode(model.prior_distribution().sample((n,))).mean
        else:
            raise ValueError(f"{type(model).__name__} is neither an AdversarialModel nor an "
                             "AmortizedModel: it has no images to measure")
    return images.clamp(0, 1)


# ------------------------------------------------------------------ all of them
def _read(classifier: DigitClassifier, images: torch.Tensor, batch_size: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and penultimate features of ``images``, as float64 NumPy."""
    probs, feats = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            f = classifier.features(images[start:start + batch_size])
            feats.append(f.double().cpu().numpy())
            probs.append(torch.softmax(classifier.head(f), -1).double().cpu().numpy())
    return np.concatenate(probs), np.concatenate(feats)


def sample_quality(
    classifier: DigitClassifier,
    generated: torch.Tensor,
    reference: torch.Tensor,
    *,
    threshold: float = CONFIDENCE_THRESHOLD,
    min_share: float = MIN_CLASS_SHARE,
    batch_size: int = 2000,
) -> SampleQuality:
    r"""Measure ``generated`` images through ``classifier`` (see the module docstring).

    Parameters
    ----------
    classifier : DigitClassifier
        Trained on images of the same size (e.g. by
        :func:`~ppl_models.diagnostics.digit_classifier.train_digit_classifier`).
    generated : Tensor (n, side * side)
        Generated images, pixels in [0, 1] (clamp a generator's output first if it may leave
        the interval), at least 2.
    reference : Tensor (m, side * side)
        Real held-out (test) images, at least 2: the reference of the Fréchet distance.
    threshold : float
        :math:`\tau` in (0, 1] of the confident share (default :data:`CONFIDENCE_THRESHOLD`).
    min_share : float
        :math:`\epsilon` in (0, 1] of the classes covered (default :data:`MIN_CLASS_SHARE`).

    Returns
    -------
    SampleQuality

    Raises
    ------
    ValueError
        Images not 2-D, of another size than the classifier's, fewer than 2 of either set, or
        a threshold outside (0, 1].
    """
    threshold = check_float(threshold, "threshold", minimum=0, maximum=1, strict_minimum=True)
    min_share = check_float(min_share, "min_share", minimum=0, maximum=1, strict_minimum=True)
    for name, images in (("generated", generated), ("reference", reference)):
        if not isinstance(images, torch.Tensor) or images.ndim != 2 or len(images) < 2:
            raise ValueError(f"{name} images must be a 2-D tensor of at least 2 images")
    was_training = classifier.training
    classifier.eval()
    try:
        probs, feats = _read(classifier, generated, batch_size)
        _, ref_feats = _read(classifier, reference, batch_size)
    finally:
        classifier.train(was_training)
    shares = class_shares(probs.argmax(1), classifier.n_classes)
    return SampleQuality(
        confident_share=float((probs.max(1) >= threshold).mean()),
        classes_covered=classes_covered(shares, min_share),
        kl_from_uniform=kl_from_uniform(shares),
        frechet_distance=frechet_distance(feats, ref_feats),
        class_shares=tuple(float(s) for s in shares),
        n_generated=len(generated),
        n_reference=len(reference),
        threshold=threshold,
        min_share=min_share,
    )
