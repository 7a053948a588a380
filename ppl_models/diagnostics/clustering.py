r"""Unsupervised clustering accuracy: the best one-to-one matching of clusters to classes.

For cluster assignments :math:`c_n \in \{0..K-1\}` and classes :math:`y_n \in \{0..C-1\}`,

.. math::

    \mathrm{ACC} = \max_{m} \frac1N \sum_n \mathbb 1[m(c_n) = y_n],

the maximum over one-to-one maps :math:`m` from clusters to classes (partial when
:math:`K \ne C`: clusters left unmatched count as errors). With the confusion matrix
:math:`M_{kc} = \#\{n : c_n = k, y_n = c\}` this is a linear assignment problem,
:math:`\max_m \sum_k M_{k, m(k)}`, solved exactly by the Hungarian method (Kuhn 1955) in
:func:`scipy.optimize.linear_sum_assignment` (rectangular matrices allowed). This is the
accuracy reported for clustering with deep generative models (e.g. Xie et al. 2016;
Dilokthanakul et al. 2016).

References
----------
Kuhn, H. W. (1955). The Hungarian method for the assignment problem. Naval Res. Logist. Q.
Xie, J., Girshick, R. & Farhadi, A. (2016). Unsupervised deep embedding for clustering
analysis. ICML.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ppl_models.models import AmortizedModel, LabelledAmortized

__all__ = ["assign_clusters", "cluster_accuracy", "cluster_confusion", "match_clusters"]


def _labels(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(f"{name} must hold whole-number labels")
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must hold non-negative labels; got {array.min()}")
    return array.astype(np.int64)


def cluster_confusion(clusters: Any, labels: Any) -> np.ndarray:
    r"""Confusion matrix :math:`M_{kc}` = number of points in cluster k with class c.

    Parameters
    ----------
    clusters, labels : array-like (N,)
        Non-negative integer cluster assignments and true classes.

    Returns
    -------
    ndarray (K, C)
        K = ``max(clusters) + 1``, C = ``max(labels) + 1``.
    """
    c = _labels(clusters, "clusters")
    y = _labels(labels, "labels")
    if c.shape != y.shape:
        raise ValueError(f"clusters and labels differ in length: {c.size} vs {y.size}")
    if c.size == 0:
        raise ValueError("clusters and labels are empty")
    matrix = np.zeros((c.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(matrix, (c, y), 1)
    return matrix


def match_clusters(clusters: Any, labels: Any) -> dict[int, int]:
    """The optimal one-to-one map cluster -> class (Hungarian method on the confusion matrix)."""
    matrix = cluster_confusion(clusters, labels)
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    return {int(r): int(c) for r, c in zip(rows, cols, strict=True)}


def cluster_accuracy(clusters: Any, labels: Any) -> float:
    r"""Unsupervised clustering accuracy in [0, 1] (see the module docstring).

    Invariant to renaming the clusters; works for any number of clusters K and classes C
    (at most :math:`\min(K, C)` clusters are matched).

    Examples
    --------
    >>> cluster_accuracy([1, 1, 0, 0, 2], [0, 0, 1, 1, 2])
    1.0
    """
    matrix = cluster_confusion(clusters, labels)
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    return float(matrix[rows, cols].sum() / matrix.sum())


def _gmvae_clusters(model: Any, x: torch.Tensor) -> torch.Tensor:
    # The exact label posterior q(y | x) (or p(y | z) at the encoder mean).
    return model.label_posterior_logits(x).argmax(-1)


def _mixture_prior_clusters(model: Any, x: torch.Tensor) -> torch.Tensor:
    # Responsibilities of the prior's components at the encoder mean mu(x):
    # argmax_k log pi_k + log p_k(mu(x)).
    prior = model.prior_distribution()
    loc = model.encoder(x)[0]
    logits = prior.mixture_distribution.logits
    return (prior.component_distribution.log_prob(loc.unsqueeze(-2)) + logits).argmax(-1)


def _has_labels(model: Any) -> bool:
    return isinstance(model, LabelledAmortized)


def _has_mixture_prior(model: Any) -> bool:
    return isinstance(model, AmortizedModel) and isinstance(
        model.prior_distribution(), torch.distributions.MixtureSameFamily
    )


#: How a model assigns clusters, first match wins: (applies?, assign(model, x) -> (N,)).
CLUSTER_RULES: tuple[tuple[Any, Any], ...] = (
    (_has_labels, _gmvae_clusters),
    (_has_mixture_prior, _mixture_prior_clusters),
)


def assign_clusters(model: Any, x: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor | None:
    r"""Cluster of each row of ``x`` under a fitted VAE, or None if its prior has no clusters.

    A GMVAE: :math:`\arg\max_y q(y \mid x)` (exact, the label is enumerated). A VAE with a
    mixture prior :math:`p(z) = \sum_k \pi_k p_k(z)` (mixture of Gaussians; VampPrior with
    :math:`p_k = q(z \mid u_k)`): :math:`\arg\max_k \pi_k p_k(\mu_\phi(x))`, the component
    with the highest responsibility for the encoder mean. A standard Normal prior: None.
    """
    for applies, assign in CLUSTER_RULES:
        if applies(model):
            x = model.validate(x)
            with torch.no_grad():
                parts = [assign(model, x[i : i + batch_size])
                         for i in range(0, x.shape[0], batch_size)]
            return torch.cat(parts)
    return None
