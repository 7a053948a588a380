"""The unsupervised clustering AAE (Makhzani et al. 2016, section 6) with more clusters than
classes, as in the paper's MNIST runs (16 or 30 clusters for 10 digits)."""

from __future__ import annotations

import torch

from ppl_models.diagnostics import cluster_accuracy
from ppl_models.infer import fit_adversarial
from ppl_models.models import ClusteringAdversarialAutoencoder


def test_more_clusters_than_classes_uses_one_cluster_per_class():
    """Four blobs of intensities in 200 dimensions, 8 clusters offered, the cross-entropy
    reconstruction of the MNIST runs: the clusters of the data are exactly four, one per blob
    (Hungarian accuracy against the blob labels near 1; 1.0 for three seeds). Planted bugs,
    three seeds each: the categorical discriminator fed the encoder's hard argmax (no
    gradient to the cluster head): 2-3 clusters, accuracy 0.33-0.75; the prior's draws of y
    uniform vectors instead of one-hot: 5-6 clusters, accuracy 0.87-0.97."""
    generator = torch.Generator().manual_seed(1)
    centres = torch.rand(4, 200, generator=generator)
    labels = torch.arange(4).repeat(150)
    x = (centres[labels] + 0.1 * torch.randn(600, 200, generator=generator)).clamp(0, 1)
    torch.manual_seed(1)
    model = ClusteringAdversarialAutoencoder(200, 8, 2, hidden=(64,), d_hidden=(32,),
                                             reconstruction="cross_entropy")
    fit_adversarial(model, x, batch_size=50, num_epochs=60, lr=1e-3, progress=False, seed=1)
    with torch.no_grad():
        clusters = model.cluster(x)
    assert clusters.unique().numel() == 4
    assert cluster_accuracy(clusters, labels) > 0.98
