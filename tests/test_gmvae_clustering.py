"""The clustering GMVAE: its training objective's extra terms, VaDE's recipe and the CLI default.

References are independent of the code under test: scipy for the label posterior and its
entropy, scikit-learn's KMeans for the baseline clustering, an uninterrupted fit for a
resumed one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import special, stats
from sklearn.cluster import KMeans

from ppl_models.diagnostics import assign_clusters, cluster_accuracy
from ppl_models.images import load_images
from ppl_models.infer import fit_clustering_vae, fit_svi
from ppl_models.models import GMVAE


def _model(**options) -> GMVAE:
    torch.manual_seed(0)
    model = GMVAE(12, 3, 4, conditional_encoder=False, hidden=(16,), **options)
    with torch.no_grad():  # distinct components, so the label posterior is not flat
        model.prior.locs.copy_(torch.randn(4, 3))
        model.prior.log_scales.fill_(0.5)
    return model


def _data(n: int = 40) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return (torch.rand(n, 12, generator=generator) < 0.3).float()


def _label_posterior_scipy(model: GMVAE, z: torch.Tensor) -> np.ndarray:
    """p(y | z) from the prior's parameters with scipy's Normal density."""
    locs = model.prior.locs.detach().double().numpy()
    scales = model.prior.log_scales.detach().double().exp().numpy()
    weights = special.log_softmax(model.prior.logits.detach().double().numpy())
    codes = z.detach().double().numpy()
    log_joint = stats.norm.logpdf(codes[:, None, :], locs, scales).sum(-1) + weights
    return special.softmax(log_joint, axis=1)


def test_balance_term_is_the_entropy_of_the_aggregated_label_posterior():
    model, x = _model(), _data()
    torch.manual_seed(5)
    plain = model.training_objective(x).item()
    model.balance_weight = 2.5
    torch.manual_seed(5)
    balanced = model.training_objective(x).item()
    torch.manual_seed(5)
    z = model.encode(x).rsample()  # the draw the objective made
    shares = _label_posterior_scipy(model, z).mean(0)
    assert balanced - plain == pytest.approx(2.5 * stats.entropy(shares), rel=1e-4, abs=1e-5)


def test_free_bits_floor_the_mean_code_kl_and_nothing_else():
    model, x = _model(), _data()
    torch.manual_seed(5)
    kl_z = model.elbo_terms(x)["kl_z"].mean().item()
    torch.manual_seed(5)
    plain = model.training_objective(x).item()
    assert kl_z > 0.1  # so that half of it is a floor that does not bind
    for floor in (0.5 * kl_z, kl_z + 3.0):
        model.free_bits = floor
        torch.manual_seed(5)
        value = model.training_objective(x).item()
        assert value == pytest.approx(plain - max(0.0, floor - kl_z), rel=1e-5, abs=1e-5)
    # below the floor the code's KL has no gradient: only the reconstruction and kl_y move z
    model.free_bits = kl_z + 3.0
    torch.manual_seed(5)
    model.training_objective(x).backward()
    floored = model.prior.log_scales.grad.clone()
    model.zero_grad()
    torch.manual_seed(5)
    terms = model.elbo_terms(x)
    (-terms["kl_y"].mean()).backward()
    assert torch.allclose(floored, model.prior.log_scales.grad, atol=1e-6)


def test_recipe_refuses_the_conditional_encoder():
    model = GMVAE(12, 3, 4, conditional_encoder=True, hidden=(16,))
    with pytest.raises(ValueError, match="conditional_encoder=False"):
        fit_clustering_vae(model, _data(), pretrain_epochs=1, num_epochs=1)
    with pytest.raises(ValueError, match="autoencoder step"):
        fit_svi(model, _data(), objective="autoencoder", num_epochs=1, batch_size=10)


def test_recipe_resumed_ends_where_an_uninterrupted_run_ends(tmp_path):
    x = _data(60)
    whole = _model()
    fit_clustering_vae(whole, x, pretrain_epochs=2, num_epochs=3, batch_size=20, seed=3,
                       checkpoint_dir=tmp_path / "whole")
    parts = _model()
    fit_clustering_vae(parts, x, pretrain_epochs=2, num_epochs=3, batch_size=20, seed=3,
                       checkpoint_dir=tmp_path / "parts", callback=lambda epoch, h: epoch == 1)
    again = _model()
    result = fit_clustering_vae(again, x, pretrain_epochs=2, num_epochs=3, batch_size=20,
                                seed=3, checkpoint_dir=tmp_path / "parts", resume=True)
    assert result.info["pretrain"] is None  # resumed past the pretraining
    for name, value in whole.state_dict().items():
        assert torch.allclose(value, again.state_dict()[name], atol=1e-6), name


def test_cli_default_gmvae_beats_kmeans_on_the_digits(tmp_path):
    from ppl_models.cli import main

    out = tmp_path / "gmvae"
    code = main(["fit", "vae", "--prior", "gmvae", "--out", str(out), "--no-plots",
                 "--particles", "10", "--quiet"])
    assert code in (0, None)
    gmvae = json.loads((out / "metrics.json").read_text())["cluster_accuracy"]
    x_train, _ = load_images("digits", split="train", binarize="threshold")
    x_test, y_test = load_images("digits", split="test", binarize="threshold")
    kmeans = KMeans(10, n_init=10, random_state=0).fit(x_train.numpy())
    baseline = cluster_accuracy(kmeans.predict(x_test.numpy()), y_test)
    # measured: 0.731 against 0.670
    assert gmvae > baseline + 0.03, (gmvae, baseline)


def test_assignments_follow_the_exact_label_posterior():
    model, x = _model(), _data()
    model.eval()
    with torch.no_grad():
        loc = model.encoder(x)[0]
    expected = _label_posterior_scipy(model, loc).argmax(1)
    assert np.array_equal(assign_clusters(model, x).numpy(), expected)


def _rings(n: int, seed: int, radii=(0.5, 1.25, 2.0), noise: float = 0.01):
    """8 x 8 grey images on three concentric rings of one plane of pixel space.

    Image n is :math:`0.5 + r_{y_n} (\\cos t_n\\, u + \\sin t_n\\, v)` plus a little noise,
    with u, v the unit-norm cosine and sine gratings of one diagonal frequency and a uniform
    phase :math:`t_n`: the class is the grating's contrast, the phase is a nuisance. Every
    class surrounds the same mean image (uniform grey), so no hyperplane separates them and
    k-means, whose clusters are the cells of their means, cannot find them.
    """
    g = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    u, v = np.cos(2 * np.pi * (i + j) / 8).ravel(), np.sin(2 * np.pi * (i + j) / 8).ravel()
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    y = g.integers(0, len(radii), n)
    t = g.uniform(0, 2 * np.pi, n)
    r = np.asarray(radii)[y][:, None]
    x = 0.5 + r * (np.cos(t)[:, None] * u + np.sin(t)[:, None] * v)
    x = np.clip(x + noise * g.standard_normal(x.shape), 0, 1)
    return torch.tensor(x, dtype=torch.float32), y


def test_gmvae_with_merged_components_finds_rings_that_kmeans_and_hyperplanes_cannot():
    from sklearn.linear_model import LogisticRegression

    from ppl_models.diagnostics.merge_components import merge_components, merged_clusters

    x, y = _rings(900, seed=0)
    x_test, y_test = _rings(450, seed=1)
    # independent references: not linearly separable (a supervised linear classifier fails),
    # and k-means on the pixels fails
    linear = LogisticRegression(max_iter=3000).fit(x.numpy(), y).score(x_test.numpy(), y_test)
    assert linear < 0.6
    kmeans = KMeans(3, n_init=10, random_state=0).fit(x.numpy())
    kmeans_accuracy = cluster_accuracy(kmeans.predict(x_test.numpy()), y_test)
    assert kmeans_accuracy < 0.6
    # VaDE's EM start (no free bits, no balance term), 45 components merged into 3; the
    # graph start with 45 labels reached 0.77 here (its own test: tests/test_graph_start.py)
    torch.manual_seed(0)
    model = GMVAE(64, 2, 45, likelihood="gaussian", conditional_encoder=False, hidden=(64,))
    fit_clustering_vae(model, x, pretrain_epochs=30, num_epochs=10, batch_size=50, seed=0,
                       start="em")
    merge = merge_components(model, x, 3)
    assert sorted(set(merge.tolist())) == [0, 1, 2]
    accuracy = cluster_accuracy(merged_clusters(model, x_test, merge), y_test)
    assert accuracy >= 0.95, (accuracy, kmeans_accuracy)


def test_merging_refuses_more_clusters_than_labels():
    from ppl_models.diagnostics.merge_components import merge_components

    with pytest.raises(ValueError, match="at most the model's 4 labels"):
        merge_components(_model(), _data(), 5)


def test_clustering_step_without_extra_terms_is_pyros_traceenum_elbo():
    # lr = 0 keeps the networks fixed; the same batch and noise for both steps, and Pyro
    # sums the label out by enumeration on its own
    import pyro
    from pyro.infer import TraceEnum_ELBO

    from ppl_models.infer.trainer import STEPS, StepInputs

    model, x = _model(), _data()
    rows = torch.arange(x.shape[0])
    losses, steps = {}, {}
    for name in ("clustering", "pyro"):
        pyro.clear_param_store()
        inputs = StepInputs(model, model.model, model.guide, TraceEnum_ELBO(max_plate_nesting=1),
                            None, (), 0.0, 1.0, 1)
        steps[name] = step = STEPS[name](inputs)
        step.prepare(x, n_obs=400, subsample=rows)
        torch.manual_seed(11)
        losses[name] = step(x, n_obs=400, subsample=rows)
    assert losses["clustering"] == pytest.approx(losses["pyro"], rel=1e-5)
    model.balance_weight = 1.0  # the extra term moves it away
    torch.manual_seed(11)
    moved = steps["clustering"](x, n_obs=400, subsample=rows)
    assert moved != pytest.approx(losses["pyro"], rel=1e-5)
