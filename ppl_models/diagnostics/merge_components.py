r"""More components than clusters, then merging: a GMVAE's labels grouped into clusters.

A Gaussian component is a poor model of a cluster that is not Gaussian (a ring, a curved
band of codes); several components tile it instead, and the tiles of one cluster share their
images between neighbours while tiles of different clusters do not. With the label
posteriors :math:`r_{nk} = p(y = k \mid x_n)` of a fitted model (the exact
:math:`p(y \mid z)` at the code mean for a GMVAE with ``conditional_encoder=False``), the
overlap of two components is their normalised co-assignment

.. math:: S_{jk} = \frac{\sum_n r_{nj} r_{nk}}{\sqrt{\sum_n r_{nj} \sum_n r_{nk}}}
    \in [0, 1],

and the components are merged by single linkage on :math:`d_{jk} = -\log S_{jk}` until
``n_clusters`` groups are left (:func:`scipy.cluster.hierarchy.linkage`): two components end
in one cluster when a chain of overlapping neighbours joins them. This is the idea of
combining mixture components into clusters of Baudry et al. (2010) and Hennig (2010), with a
co-assignment overlap in place of their entropy criterion.

References
----------
Baudry, J.-P., Raftery, A. E., Celeux, G., Lo, K. & Gottardo, R. (2010). Combining mixture
components for clustering. Journal of Computational and Graphical Statistics 19(2).
Hennig, C. (2010). Methods for merging Gaussian mixture components. Advances in Data
Analysis and Classification 4.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from ppl_models._shared.checks import check_int
from ppl_models.models import LabelledAmortized

__all__ = ["component_overlap", "merge_components", "merged_clusters"]


def _posteriors(model: LabelledAmortized, x: torch.Tensor, batch_size: int) -> np.ndarray:
    if not isinstance(model, LabelledAmortized):
        raise ValueError(
            f"merging needs a model with a label posterior (a GMVAE); got {type(model).__name__}"
        )
    x = model.validate(x)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        parts = [torch.softmax(model.label_posterior_logits(x[i : i + batch_size]), -1)
                 for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(parts).double().numpy()


def component_overlap(model: LabelledAmortized, x: torch.Tensor, *,
                      batch_size: int = 1000) -> np.ndarray:
    r"""The co-assignment overlap :math:`S` ``(K, K)`` of the module docstring, on ``x``."""
    r = _posteriors(model, x, batch_size)
    mass = r.sum(0)
    return (r.T @ r) / np.sqrt(np.outer(mass, mass)).clip(1e-300)


def merge_components(model: LabelledAmortized, x: torch.Tensor, n_clusters: int, *,
                     batch_size: int = 1000) -> torch.Tensor:
    """The cluster ``(K,)`` of each label after merging down to ``n_clusters`` groups.

    Parameters
    ----------
    model : LabelledAmortized
        A fitted model with K labels (a GMVAE).
    x : Tensor (N, D)
        Images on which the overlaps are measured (the training images).
    n_clusters : int
        Groups wanted, at most K.

    Returns
    -------
    Tensor (K,)
        Integer cluster of each label, in ``0 .. n_clusters - 1``.

    Raises
    ------
    ValueError
        The model has no label posterior, or ``n_clusters`` is not an integer in 1..K.
    """
    overlap = component_overlap(model, x, batch_size=batch_size)
    k = overlap.shape[0]
    check_int(n_clusters, "n_clusters", minimum=1)
    if n_clusters > k:
        raise ValueError(f"n_clusters must be at most the model's {k} labels; got {n_clusters}")
    if n_clusters == k:
        return torch.arange(k)
    distance = -np.log(np.clip(overlap, 1e-300, None))
    distance = (distance + distance.T) / 2
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="single")
    groups = fcluster(tree, n_clusters, criterion="maxclust") - 1
    return torch.as_tensor(groups, dtype=torch.long)


def merged_clusters(model: LabelledAmortized, x: torch.Tensor, merge: torch.Tensor, *,
                    batch_size: int = 1000) -> torch.Tensor:
    """The merged cluster ``(N,)`` of each row of ``x``: ``merge[argmax_y p(y | x)]``."""
    r = _posteriors(model, x, batch_size)
    return merge[torch.as_tensor(r.argmax(1))]
