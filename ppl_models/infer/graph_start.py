r"""A clustering start that follows the codes' manifold: k-nearest-neighbour graph, spectral
embedding, Gaussian mixture (N2D's recipe with a spectral embedding in place of UMAP).

A Gaussian mixture fitted to an autoencoder's codes cuts curved or elongated clusters
(on binarized MNIST, 10-d codes of a 500-500 autoencoder: 0.78 cluster accuracy on the
validation split). The codes' neighbourhoods are far purer than their Gaussian cells, so the
start here clusters the graph instead:

1. the symmetrised k-nearest-neighbour graph :math:`W` of the codes
   (:math:`W_{ij} = 1` when either is among the other's ``n_neighbors`` nearest);
2. its spectral embedding: the eigenvectors :math:`u_1, \dots, u_m` after the first of
   :math:`D^{-1/2} W D^{-1/2}` (:math:`D` the degrees), for the largest eigenvalues, mapped
   back to the random walk's :math:`D^{-1/2} u_j` and scaled to unit variance
   (the Laplacian eigenmaps of Belkin & Niyogi 2003, the embedding of Shi & Malik's
   normalised cut);
3. a diagonal Gaussian mixture (EM) with ``over_clusters`` components (by default four
   times ``n_clusters``) in the first m coordinates of that embedding (m = 20 by default),
   its components then merged pairwise along the graph down to ``n_clusters``
   (:func:`merge_along_graph`: the pair with the most edges between them for their
   volumes first). With several m or EM starts, the candidate labelling with the highest
   modularity of the graph (:func:`modularity`, no labels used) is the start.

Measured on MNIST codes (validation split, ``benchmarks/RESULTS.md``): 10 components fitted
directly in the embedding are fragile, 0.63-0.92 for seed 0 depending on m and the EM start,
and every one of fifteen candidates of seed 1 merged two digits (at best 0.84); over-clustering
and merging along the graph gave 0.899 and 0.892 (seeds 0 and 1, m = 20).

References
----------
McConville, R., Santos-Rodriguez, R., Piechocki, R. J. & Craddock, I. (2020). N2D: (not too)
deep clustering via clustering the local manifold of an autoencoded embedding. ICPR.
Belkin, M. & Niyogi, P. (2003). Laplacian eigenmaps for dimensionality reduction and data
representation. Neural Computation 15(6).
Shi, J. & Malik, J. (2000). Normalized cuts and image segmentation. IEEE TPAMI 22(8).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors

from ppl_models._shared.checks import check_int

__all__ = [
    "graph_start_labels",
    "knn_graph",
    "merge_along_graph",
    "modularity",
    "normalized_cut",
    "spectral_embedding",
]


def _as_array(codes: torch.Tensor | np.ndarray) -> np.ndarray:
    array = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if array.ndim != 2 or not np.isfinite(array).all():
        raise ValueError(f"codes must be a finite (N, L) array; got shape {array.shape}")
    return array.astype(np.float64)


def knn_graph(codes: torch.Tensor | np.ndarray, n_neighbors: int = 10) -> sp.csr_matrix:
    r"""The symmetrised 0/1 k-nearest-neighbour graph ``(N, N)`` of the rows of ``codes``.

    :math:`W_{ij} = 1` when :math:`j` is among the ``n_neighbors`` nearest rows of :math:`i`
    (Euclidean, the row itself excluded) or :math:`i` among those of :math:`j`.
    """
    array = _as_array(codes)
    check_int(n_neighbors, "n_neighbors")
    if n_neighbors >= array.shape[0]:
        raise ValueError(
            f"n_neighbors must be below the {array.shape[0]} codes; got {n_neighbors}")
    search = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(array)
    _, index = search.kneighbors(array)
    rows = np.repeat(np.arange(array.shape[0]), n_neighbors)
    # drop each row itself (first column, unless duplicates put another row first)
    neighbours = np.array([r[r != i][:n_neighbors] for i, r in enumerate(index)])
    graph = sp.csr_matrix((np.ones(rows.size), (rows, neighbours.ravel())),
                          shape=(array.shape[0],) * 2)
    return ((graph + graph.T) > 0).astype(np.float64).tocsr()


def spectral_embedding(graph: sp.spmatrix, n_components: int, *, seed: int = 0) -> np.ndarray:
    r"""The ``(N, n_components)`` spectral embedding of a symmetric graph (module docstring).

    Eigenvectors of :math:`D^{-1/2} W D^{-1/2}` for its largest eigenvalues (Lanczos,
    :func:`scipy.sparse.linalg.eigsh`) after the first, :math:`D^{1/2} \mathbf 1` (deflated,
    so that a disconnected graph's repeated eigenvalue 1 yields its components' indicators),
    each mapped to :math:`D^{-1/2} u_j` and scaled to unit variance.
    """
    check_int(n_components, "n_components")
    n = graph.shape[0]
    if n_components + 1 >= n:
        raise ValueError(f"n_components must be below {n - 1} for {n} nodes; got {n_components}")
    degree = np.asarray(graph.sum(1)).ravel()
    if (degree <= 0).any():
        raise ValueError("the graph has isolated nodes (a row without edges)")
    scale = sp.diags(1.0 / np.sqrt(degree))
    normalised = (scale @ graph @ scale).tocsr()
    # deflate the known top eigenvector sqrt(D) 1 (eigenvalue 1), so that a disconnected
    # graph's repeated eigenvalue 1 cannot hand back the constant in place of an indicator
    top = np.sqrt(degree) / np.linalg.norm(np.sqrt(degree))
    operator = LinearOperator(
        (n, n), matvec=lambda v: normalised @ v - top * (top @ v), dtype=np.float64)
    start = np.random.default_rng(seed).uniform(0.5, 1.5, n)
    values, vectors = eigsh(operator, k=n_components, which="LA", tol=1e-6, v0=start)
    order = np.argsort(-values)
    embedding = vectors[:, order] / np.sqrt(degree)[:, None]
    return embedding / embedding.std(0).clip(1e-300)


def normalized_cut(graph: sp.spmatrix, labels: np.ndarray) -> float:
    r"""Shi & Malik's normalised cut of a labelling,
    :math:`\sum_k \mathrm{cut}(A_k, \bar A_k) / \mathrm{vol}(A_k)`: the share of each
    cluster's edges that leave it, summed over the clusters (0 for clusters that no edge
    joins; lower is a better partition of the graph)."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1
    member = sp.csr_matrix((np.ones(labels.size), (np.arange(labels.size), labels)),
                           shape=(labels.size, k))
    within = (member.T @ graph @ member).toarray()
    volume = within.sum(1)
    return float(((volume - np.diag(within)) / np.maximum(volume, 1e-300)).sum())


def _mixture_labels(points: np.ndarray, n_clusters: int, seed: int) -> np.ndarray | None:
    """Labels of a diagonal Gaussian mixture fitted by EM (one k-means++ start); on a
    collapsed component (few points in many dimensions) refitted with a larger variance
    floor; None when every floor fails."""
    for floor in (1e-6, 1e-3, 1e-1):
        try:
            return GaussianMixture(n_clusters, covariance_type="diag", n_init=1,
                                   reg_covar=floor, random_state=seed).fit_predict(points)
        except ValueError:
            continue
    return None


def modularity(graph: sp.spmatrix, labels: np.ndarray) -> float:
    r"""Newman & Girvan's modularity of a labelling,
    :math:`Q = \sum_k \big[\frac{e_{kk}}{2m} - (\frac{\mathrm{vol}(A_k)}{2m})^2\big]`,
    :math:`e_{kk}` the edge weight inside cluster k (both directions), :math:`2m` the
    total: the share of edges inside the clusters beyond what random wiring with the same
    degrees would put there (higher is a better partition)."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1
    member = sp.csr_matrix((np.ones(labels.size), (np.arange(labels.size), labels)),
                           shape=(labels.size, k))
    within = (member.T @ graph @ member).toarray()
    total = within.sum()
    return float(np.trace(within) / total - ((within.sum(1) / total) ** 2).sum())


def merge_along_graph(graph: sp.spmatrix, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    r"""Merge the clusters of ``labels`` pairwise until ``n_clusters`` are left.

    With :math:`C_{jk}` the edge weight between clusters j and k and :math:`v_j = \sum_k
    C_{jk}` their volumes, the pair with the largest :math:`C_{jk} / (v_j v_k)` (edges
    between them beyond what their sizes explain) is merged first, then the next, as in
    agglomerative clustering of a graph. Empty labels are dropped first; the result is
    relabelled ``0 .. n_clusters - 1``.
    """
    check_int(n_clusters, "n_clusters")
    _, labels = np.unique(np.asarray(labels), return_inverse=True)
    k = int(labels.max()) + 1
    member = sp.csr_matrix((np.ones(labels.size), (np.arange(labels.size), labels)),
                           shape=(labels.size, k))
    between = (member.T @ graph @ member).toarray()
    groups = [[j] for j in range(k)]
    while len(groups) > n_clusters:
        volume = between.sum(1)
        affinity = between / np.outer(volume, volume).clip(1e-300)
        np.fill_diagonal(affinity, -np.inf)
        i, j = sorted(np.unravel_index(np.argmax(affinity), affinity.shape))
        between[i] += between[j]
        between[:, i] += between[:, j]
        between = np.delete(np.delete(between, j, 0), j, 1)
        groups[i] += groups.pop(j)
    mapping = np.empty(k, dtype=int)
    for index, group in enumerate(groups):
        mapping[group] = index
    return mapping[labels]


def graph_start_labels(
    codes: torch.Tensor | np.ndarray,
    n_clusters: int,
    *,
    n_neighbors: int = 10,
    n_components: int | Sequence[int] = 20,
    n_restarts: int = 1,
    over_clusters: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Cluster labels ``(N,)`` of the codes from their graph (module docstring).

    Every pair of an embedding dimension (``n_components``) and a restart (``n_restarts``
    EM fits from different k-means++ starts) gives a candidate labelling; the one with the
    highest :func:`modularity` of the graph is returned (the graph alone, no labels). On
    MNIST codes (seed 0, fifteen candidates, validation accuracy 0.63-0.90) the highest
    modularity picked the most accurate candidate (0.90); the mixture's own likelihood and
    the :func:`normalized_cut` did not (they picked 0.79 and 0.70: the cut favours one large
    cluster of merged digits).

    Parameters
    ----------
    codes : Tensor or array (N, L)
        An encoder's code means (or any points).
    n_clusters : int
        Clusters wanted.
    n_neighbors : int
        k of the nearest-neighbour graph.
    n_components : int or sequence of int
        Dimensions of the spectral embedding the mixture is fitted in (each a candidate).
    n_restarts : int
        EM fits per dimension (one k-means++ start each, seeds ``seed, seed + 1, ...``).
    over_clusters : int, optional
        Components of each mixture, merged along the graph down to ``n_clusters``
        (:func:`merge_along_graph`); default ``4 * n_clusters``; ``n_clusters`` = no merging.
        Over-clustering and merging was the more robust on MNIST codes (validation, 20
        dimensions, seeds 0 and 1: 0.899 and 0.892 against 0.898 and 0.767 for 10
        components directly).
    seed : int

    Returns
    -------
    ndarray (N,)
        Integer labels in ``0 .. n_clusters - 1``.

    Raises
    ------
    ValueError
        Codes not a finite 2-d array, or sizes out of range.
    """
    check_int(n_clusters, "n_clusters")
    check_int(n_restarts, "n_restarts")
    fitted = 4 * n_clusters if over_clusters is None else check_int(over_clusters,
                                                                    "over_clusters")
    if fitted < n_clusters:
        raise ValueError(f"over_clusters must be at least n_clusters={n_clusters}; got "
                         f"{fitted}")
    dims = [n_components] if isinstance(n_components, int) else list(n_components)
    if not dims:
        raise ValueError("n_components must name at least one dimension")
    for dim in dims:
        check_int(dim, "n_components")
    graph = knn_graph(codes, n_neighbors)
    embedding = spectral_embedding(graph, max(dims), seed=seed)
    best, best_score = None, -np.inf
    for dim in dims:
        for restart in range(n_restarts):
            labels = _mixture_labels(embedding[:, :dim], fitted, seed + restart)
            if labels is None:
                continue
            if fitted > n_clusters:
                labels = merge_along_graph(graph, labels, n_clusters)
            score = modularity(graph, labels)
            if score > best_score:
                best, best_score = labels, score
    if best is None:
        raise ValueError(f"no Gaussian mixture of {n_clusters} components fits the "
                         f"embedding of these {embedding.shape[0]} codes (too few codes)")
    return best
