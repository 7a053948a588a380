"""The graph start of the clustering GMVAE and the label warm start.

References independent of the code under test: scikit-learn's ``spectral_embedding`` and
``KMeans``, the generating labels of ``make_moons`` / ``make_circles``, an edge-by-edge loop
for the normalised cut, the pairwise sum for the modularity, numpy's grouped moments for
the components.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from sklearn.cluster import KMeans
from sklearn.datasets import make_circles, make_moons
from sklearn.manifold import spectral_embedding as sklearn_spectral_embedding

from ppl_models.diagnostics import cluster_accuracy
from ppl_models.infer.graph_start import (
    graph_start_labels,
    knn_graph,
    merge_along_graph,
    modularity,
    normalized_cut,
    spectral_embedding,
)
from ppl_models.infer.label_start import init_prior_from_labels, warm_start_labels
from ppl_models.models import GMVAE


@pytest.mark.parametrize("make", [
    lambda: make_moons(400, noise=0.06, random_state=0),
    lambda: make_circles(400, factor=0.4, noise=0.04, random_state=0),
])
def test_graph_start_finds_what_kmeans_cuts(make):
    points, truth = make()
    kmeans = KMeans(2, n_init=10, random_state=0).fit_predict(points)
    assert cluster_accuracy(torch.tensor(kmeans), torch.tensor(truth)) < 0.8
    labels = graph_start_labels(points, 2, n_components=(2, 4), seed=0)
    assert cluster_accuracy(torch.tensor(labels), torch.tensor(truth)) >= 0.99


def test_spectral_embedding_spans_sklearns():
    points, _ = make_moons(300, noise=0.1, random_state=1)
    graph = knn_graph(points, 8)
    ours = spectral_embedding(graph, 4, seed=0)
    theirs = sklearn_spectral_embedding(graph, n_components=5, drop_first=True,
                                        random_state=0, eigen_tol=1e-10)
    assert ours.shape == (300, 4)
    # the same subspace (eigenvectors of distinct eigenvalues, up to sign and scale)
    assert np.degrees(subspace_angles(ours, theirs[:, :4])).max() < 1.0


def test_knn_graph_is_the_symmetrised_neighbour_relation():
    points = np.random.default_rng(0).normal(size=(40, 3))
    graph = knn_graph(points, 3).toarray()
    distance = ((points[:, None] - points[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    near = np.zeros((40, 40))
    for i, row in enumerate(distance):
        near[i, np.argsort(row)[:3]] = 1
    assert np.array_equal(graph, np.maximum(near, near.T))


def test_normalized_cut_counts_leaving_edges():
    points = np.random.default_rng(2).normal(size=(30, 2))
    graph = knn_graph(points, 4)
    labels = np.random.default_rng(3).integers(0, 3, 30)
    dense = graph.toarray()
    expected = 0.0
    for k in range(3):
        inside = labels == k
        expected += dense[inside][:, ~inside].sum() / dense[inside].sum()
    assert normalized_cut(graph, labels) == pytest.approx(expected)


def test_graph_start_refuses_bad_codes():
    with pytest.raises(ValueError, match="finite"):
        graph_start_labels(np.full((10, 2), np.nan), 2)
    with pytest.raises(ValueError, match="n_neighbors"):
        knn_graph(np.zeros((5, 2)), 5)


def _xor_model(n: int = 300):
    """Points in a square labelled by the sign of x1 * x2 (XOR): both labels have the same
    mean and spread, so no pair of Gaussian cells of the raw points separates them."""
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, size=(n, 2))
    truth = (points[:, 0] * points[:, 1] > 0).astype(int)
    mixing = rng.normal(size=(2, 6))
    x = torch.tensor(points @ mixing + 0.01 * rng.normal(size=(n, 6)), dtype=torch.float32)
    torch.manual_seed(0)
    model = GMVAE(6, 2, 2, conditional_encoder=False, likelihood="gaussian", hidden=(32,))
    return model, x, truth


def test_components_are_the_grouped_moments_of_the_codes():
    model, x, truth = _xor_model()
    init_prior_from_labels(model, x, truth)
    with torch.no_grad():
        codes = model.encoder(x)[0].double().numpy()
    for k in range(2):
        group = codes[truth == k]
        assert np.allclose(model.prior.locs[k].detach().numpy(), group.mean(0), atol=1e-5)
        assert np.allclose(model.prior.log_scales[k].exp().detach().numpy(), group.std(0),
                           rtol=1e-4)
    shares = np.bincount(truth) / truth.size
    assert np.allclose(model.prior.log_weights().exp().detach().numpy(), shares, atol=1e-6)


def test_warm_start_teaches_the_label_posterior_an_xor_partition():
    model, x, truth = _xor_model()
    init_prior_from_labels(model, x, truth)
    # an XOR partition: the Gaussian cells of the untrained codes cannot hold it
    with torch.no_grad():
        before = model.label_posterior_logits(x).argmax(-1)
    assert cluster_accuracy(before, torch.tensor(truth)) < 0.8
    agreement = warm_start_labels(model, x, truth, epochs=100, lr=1e-2,
                                  batch_size=50)
    with torch.no_grad():
        after = model.label_posterior_logits(x).argmax(-1)
    assert cluster_accuracy(after, torch.tensor(truth)) >= 0.95
    assert agreement[-1] > agreement[0]


def test_label_start_refuses_wrong_labels():
    model, x, truth = _xor_model(50)
    with pytest.raises(ValueError, match="one per image"):
        init_prior_from_labels(model, x, truth[:10])
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        warm_start_labels(model, x, truth + 1)


def test_modularity_is_newman_girvans_pairwise_sum():
    points = np.random.default_rng(4).normal(size=(25, 2))
    graph = knn_graph(points, 3)
    labels = np.random.default_rng(5).integers(0, 4, 25)
    a = graph.toarray()
    degree, total = a.sum(1), a.sum()
    same = labels[:, None] == labels[None, :]
    expected = ((a - np.outer(degree, degree) / total) * same).sum() / total
    assert modularity(graph, labels) == pytest.approx(expected)


def test_merging_along_the_graph_rejoins_split_components():
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(6)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(size=(30, 2)) for c in centres])
    graph = knn_graph(points, 5)
    n_parts, parts = connected_components(graph, directed=False)
    assert n_parts == 3
    split = parts * 2 + (points[:, 0] + points[:, 1] > (centres.sum(1)[parts]))  # 6 halves
    merged = merge_along_graph(graph, split, 3)
    assert cluster_accuracy(torch.tensor(merged), torch.tensor(parts)) == 1.0
