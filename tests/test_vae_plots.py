"""PNG pictures of a VAE: the right images in the right places, files written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from ppl_models.diagnostics import (
    plot_cluster_samples,
    plot_interpolations,
    plot_latent_map,
    plot_prior_samples,
    plot_reconstructions,
    save_vae_plots,
)
from ppl_models.models import GMVAE, VAE, VampPrior


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.bernoulli(torch.full((40, 64), 0.3))


def _images(fig) -> list[np.ndarray]:
    return [ax.images[0].get_array().data for ax in fig.axes if ax.images]


def test_reconstructions_show_inputs_over_decoded_posterior_means(x):
    model = VAE(64, 3, hidden=(16,)).eval()
    fig = plot_reconstructions(model, x, n=5)
    shown = _images(fig)
    assert len(shown) == 10 and shown[0].shape == (8, 8)
    with torch.no_grad():
        expected = torch.sigmoid(model.decoder(model.encoder(x[:5])[0])).numpy()
    for j in range(5):
        np.testing.assert_array_equal(shown[j], x[j].reshape(8, 8).numpy())
        np.testing.assert_allclose(shown[5 + j], expected[j].reshape(8, 8), rtol=1e-5)


def test_interpolation_rows_run_from_one_code_to_the_other(x):
    model = VAE(64, 3, hidden=(16,)).eval()
    fig = plot_interpolations(model, x, steps=6, pairs=2)
    shown = _images(fig)
    assert len(shown) == 12
    with torch.no_grad():
        mu = model.encoder(x[:4])[0]
        ends = torch.sigmoid(model.decoder(mu)).numpy()
        middle = torch.sigmoid(model.decoder(0.4 * mu[2] + 0.6 * mu[3])).numpy()
    np.testing.assert_allclose(shown[0], ends[0].reshape(8, 8), rtol=1e-5)
    np.testing.assert_allclose(shown[5], ends[1].reshape(8, 8), rtol=1e-5)
    np.testing.assert_allclose(shown[6], ends[2].reshape(8, 8), rtol=1e-5)
    np.testing.assert_allclose(shown[9], middle.reshape(8, 8), rtol=1e-4)  # t = 3/5


def test_latent_map_is_the_pca_of_posterior_means(x):
    model = VAE(64, 5, hidden=(16,)).eval()
    labels = torch.arange(40) % 10
    fig = plot_latent_map(model, x, labels)
    points = fig.axes[0].collections[0].get_offsets()
    with torch.no_grad():
        mu = model.encoder(x)[0].double().numpy()
    reference = PCA(2).fit_transform(mu)
    for j in range(2):  # principal components are defined up to sign
        sign = np.sign(np.dot(points[:, j], reference[:, j]))
        np.testing.assert_allclose(sign * points[:, j], reference[:, j], atol=1e-5)
    np.testing.assert_array_equal(fig.axes[0].collections[0].get_array(), labels.numpy())
    two = VAE(64, 2, hidden=(16,)).eval()
    with torch.no_grad():
        np.testing.assert_allclose(
            plot_latent_map(two, x).axes[0].collections[0].get_offsets(),
            two.encoder(x)[0].numpy(), rtol=1e-6)


def test_prior_and_cluster_samples_have_one_image_each(x):
    model = GMVAE(64, 3, 4, hidden=(16,)).eval()
    assert len(_images(plot_prior_samples(model, n=10))) == 10
    assert len(_images(plot_cluster_samples(model, per_cluster=3))) == 12
    with pytest.raises(ValueError, match="no cluster labels"):
        plot_cluster_samples(VAE(64, 3, hidden=(16,)))


@pytest.mark.parametrize(
    ("model", "count"),
    [(VAE(64, 3, hidden=(16,)), 4), (VAE(64, 3, prior=VampPrior(5), hidden=(16,)), 4),
     (GMVAE(64, 3, 4, hidden=(16,)), 5), (GMVAE(64, 3, 4, conditional_encoder=False), 5)],
)
def test_save_vae_plots_writes_nonempty_pngs(tmp_path, x, model, count):
    written = save_vae_plots(model, x, torch.arange(40) % 4, tmp_path / "png")
    assert len(written) == count and model.training  # mode restored
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_non_square_inputs_are_refused(tmp_path):
    model = VAE(10, 2, likelihood="gaussian")
    with pytest.raises(ValueError, match="square"):
        save_vae_plots(model, torch.randn(4, 10), None, tmp_path)
