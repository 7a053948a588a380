"""Clustering accuracy with Hungarian matching, against brute force over permutations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ppl_models.diagnostics import assign_clusters, cluster_accuracy, match_clusters
from ppl_models.models import GMVAE, VAE, MixtureOfGaussiansPrior


def _brute_force(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Max over every injective map clusters -> classes (padded with 'unmatched' = -1)."""
    k, c = int(clusters.max()) + 1, int(labels.max()) + 1
    targets = list(range(c)) + [-1] * k
    best = 0
    for perm in set(itertools.permutations(targets, k)):
        mapped = np.array(perm)[clusters]
        best = max(best, int((mapped == labels).sum()))
    return best / len(labels)


def test_a_relabelling_of_the_classes_scores_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=200)
    perm = np.array([3, 0, 4, 1, 2])
    assert cluster_accuracy(perm[labels], labels) == 1.0
    assert match_clusters(perm[labels], labels) == {int(perm[j]): j for j in range(5)}


def test_hand_computed_confusion():
    # Confusion matrix [[3, 1], [2, 4]] (rows clusters): the diagonal keeps 3 + 4 = 7 of 10,
    # the anti-diagonal 1 + 2 = 3; so 0.7.
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    labels = np.array([0, 0, 0, 1, 0, 0, 1, 1, 1, 1])
    assert cluster_accuracy(clusters, labels) == pytest.approx(0.7)


@pytest.mark.parametrize(("k", "c"), [(3, 3), (4, 3), (2, 4), (5, 5)])
def test_matches_brute_force_over_permutations(k, c):
    rng = np.random.default_rng(k * 10 + c)
    for _ in range(5):
        clusters = rng.integers(0, k, size=60)
        labels = rng.integers(0, c, size=60)
        clusters[:k] = np.arange(k)  # every cluster and class present
        labels[-c:] = np.arange(c)
        assert cluster_accuracy(clusters, labels) == pytest.approx(
            _brute_force(clusters, labels)
        )


def test_accepts_tensors():
    y = torch.tensor([0, 1, 2, 2])
    assert cluster_accuracy(torch.tensor([2, 0, 1, 1]), y) == 1.0


@pytest.mark.parametrize(
    ("clusters", "labels", "message"),
    [([0, 1], [0, 1, 1], "differ in length"), ([], [], "empty"),
     ([0, -1], [0, 1], "non-negative"), ([[0, 1]], [[0, 1]], "one-dimensional"),
     ([0.5, 1.0], [0, 1], "whole-number")],
)
def test_bad_input_is_refused(clusters, labels, message):
    with pytest.raises(ValueError, match=message):
        cluster_accuracy(clusters, labels)


def test_assign_clusters_for_a_mixture_prior_is_the_argmax_responsibility():
    torch.manual_seed(0)
    model = VAE(6, 2, prior=MixtureOfGaussiansPrior(3), hidden=(8,))
    x = torch.bernoulli(torch.full((40, 6), 0.5))
    got = assign_clusters(model, x)
    # Independent: Bayes' rule by hand at the encoder mean, component by component.
    with torch.no_grad():
        loc = model.encoder(x)[0].double()
        prior = model.prior
        weights = torch.softmax(prior.logits.double(), 0)
        dens = torch.stack([
            weights[j] * torch.exp(torch.distributions.Normal(
                prior.locs[j].double(), prior.log_scales[j].exp().double()
            ).log_prob(loc).sum(-1)) for j in range(3)
        ], -1)
    assert torch.equal(got, dens.argmax(-1))
    assert assign_clusters(VAE(6, 2, hidden=(8,)), x) is None


def test_assign_clusters_for_a_gmvae_is_the_argmax_of_q_y():
    torch.manual_seed(0)
    model = GMVAE(6, 2, 4, hidden=(8,))
    x = torch.bernoulli(torch.full((30, 6), 0.5))
    with torch.no_grad():
        probs = torch.softmax(model.classifier(x), -1)
    assert torch.equal(assign_clusters(model, x, batch_size=7), probs.argmax(-1))
