"""The adversarial autoencoder's options (Gaussian encoder, clustering heads, label-conditioned
mixture prior), resuming a fit with more epochs, and the adversarial memory estimate.

References: the Gaussian encoder's draws against the normal distribution (scipy's KS test) and
the reparameterisation written out by hand; the clustering AAE's step against both
discriminators' cross-entropies written from the paper; the labelled codes against the prior's
own component means; the extended fit against an uninterrupted one; the memory estimate against
``numel * element_size`` and a hand count of a small network's activations.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from torch.nn import functional as F

from ppl_models.diagnostics import cluster_accuracy
from ppl_models.infer import fit_svi
from ppl_models.infer.adversarial import fit_adversarial
from ppl_models.infer.adversarial_memory import adversarial_memory, step_activation_bytes
from ppl_models.infer.resources import MemoryLimitError, check_memory
from ppl_models.infer.trainer.steps import AdversarialStep
from ppl_models.models import (
    GAN,
    MODELS,
    VAE,
    AdversarialAutoencoder,
    AdversarialModel,
    ClusteringAdversarialAutoencoder,
    LabelledAdversarialAutoencoder,
    LatentModel,
    WassersteinAutoencoder,
    with_labels,
)


def _blobs(n_per: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` well-separated Gaussian blobs in ``d`` dimensions, with their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.eye(k, d)
    labels = torch.arange(k).repeat_interleave(n_per)
    return centres[labels] + 0.3 * torch.randn(len(labels), d, generator=g), labels


def _ring_mixture(k: int, radius: float = 3.0, scale: float = 0.3) -> dist.MixtureSameFamily:
    angles = 2 * math.pi * torch.arange(k) / k
    means = radius * torch.stack([angles.cos(), angles.sin()], -1)
    return dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(k)),
                                  dist.Normal(means, scale).to_event(1))


# ----------------------------------------------------------------------------- Gaussian encoder
def test_gaussian_encoder_draws_are_reparameterised_normal_draws():
    torch.manual_seed(0)
    model = AdversarialAutoencoder(4, 2, encoder="gaussian", hidden=(8,))
    x = torch.randn(1, 4).expand(4000, 4)
    q = model.code_distribution(x[:1])
    loc, scale = q.base_dist.loc[0].detach(), q.base_dist.scale[0].detach()
    torch.testing.assert_close(model.encode(x[:1])[0], loc)
    z = model.sample_codes(x).detach()
    for j in range(2):  # each coordinate is N(loc_j, scale_j^2)
        assert stats.kstest(((z[:, j] - loc[j]) / scale[j]).numpy(), "norm").pvalue > 1e-3
    # The draw is loc + scale * eps with eps from the global RNG, and carries the gradient.
    torch.manual_seed(7)
    drawn = model.sample_codes(x[:3])
    torch.manual_seed(7)
    eps = torch.randn(3, 2)
    with torch.no_grad():
        torch.testing.assert_close(drawn.detach(), loc + scale * eps)
    grads = torch.autograd.grad(drawn.sum(), list(model.encoder.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)
    assert model.config()["encoder"] == "gaussian"
    with pytest.raises(ValueError, match="encoder='gaussian'"):
        AdversarialAutoencoder(4, 2).code_distribution(x)
    with pytest.raises(ValueError, match="encoder"):
        AdversarialAutoencoder(4, 2, encoder="stochastic")


def test_gaussian_encoder_aae_pulls_its_codes_to_the_prior():
    torch.manual_seed(1)
    x, _ = _blobs(100, 3, 4, seed=1)
    prior = dist.Normal(torch.tensor([3.0, -3.0]), 0.5).to_event(1)  # away from the start
    model = WassersteinAutoencoder(4, 2, encoder="gaussian", hidden=(16,), kernel="gaussian",
                                   kernel_scale=1.0, prior=prior, weight=100.0)
    draws = prior.sample((300,))

    def mmd() -> float:
        with torch.no_grad():
            codes = model.sample_codes(x)
            k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / 2)  # noqa: E731
            n = len(codes)
            return float((k(codes, codes).sum() - n) / (n * (n - 1))
                         + (k(draws, draws).sum() - n) / (n * (n - 1))
                         - 2 * k(codes, draws).mean())

    before = mmd()
    fit_adversarial(model, x, batch_size=100, num_epochs=40, lr=1e-2, progress=False)
    assert mmd() < 0.2 * before


# ----------------------------------------------------------------------------- clustering AAE
def test_clustering_aae_roles_shapes_and_its_two_discriminators():
    torch.manual_seed(0)
    model = ClusteringAdversarialAutoencoder(6, 4, 3, hidden=(8,), d_hidden=(8,))
    assert isinstance(model, LatentModel) and isinstance(model, AdversarialModel)
    assert MODELS[model.name] is ClusteringAdversarialAutoencoder
    x = torch.randn(5, 6)
    draws = model.adversarial_draws(x)
    assert draws.real.shape == draws.fake.shape == (5, 7)
    onehot = draws.real[:, :4]
    assert torch.equal(onehot.sum(1), torch.ones(5)) and set(onehot.unique().tolist()) == {0, 1}
    torch.testing.assert_close(draws.fake[:, :4].sum(1), torch.ones(5))
    assert model.cluster(x).shape == (5,) and model.encode(x).shape == (5, 3)
    assert model.generate(2).shape == (2, 6)
    rebuilt = ClusteringAdversarialAutoencoder.from_config(model.config())
    assert rebuilt.config() == model.config()
    # The step's discriminator loss is the mean of the two discriminators' cross-entropies,
    # written from the paper: -log D_cat(onehot) - log(1 - D_cat(y)), the same for the style.
    step = AdversarialStep(model, 1e-3, 1.0, 10)
    torch.manual_seed(3)
    loss = step.discriminator_loss(x)
    torch.manual_seed(3)
    with torch.no_grad():
        y = torch.randint(4, (5,))
        z = model.prior.sample((5,))
        fake = model.sample_codes(x)
    d_cat, d_style = model.discriminator.categorical, model.discriminator.style
    sig = torch.sigmoid
    cat_loss = -(sig(d_cat(F.one_hot(y, 4).float())).log().mean()
                 + (1 - sig(d_cat(fake[:, :4]))).log().mean())
    style_loss = -(sig(d_style(z)).log().mean() + (1 - sig(d_style(fake[:, 4:]))).log().mean())
    torch.testing.assert_close(loss, (cat_loss + style_loss) / 2)


def test_clustering_aae_finds_separated_clusters():
    torch.manual_seed(0)
    x, labels = _blobs(100, 3, 6, seed=2)
    model = ClusteringAdversarialAutoencoder(6, 3, 2, hidden=(32,), d_hidden=(16,))
    fit_adversarial(model, x, batch_size=50, num_epochs=60, lr=3e-3, progress=False)
    with torch.no_grad():
        assert cluster_accuracy(model.cluster(x), labels) > 0.9


# ----------------------------------------------------------------------------- labelled prior
@pytest.mark.parametrize("shift", [0, 1])
def test_labels_put_the_codes_of_class_k_on_prior_component_k(shift):
    # Class c is given the label (c + shift) % K: its codes must follow the label to that
    # component, whatever arrangement an unlabelled AAE would have chosen from this seed.
    torch.manual_seed(0)
    k = 3
    x, classes = _blobs(100, k, 6, seed=3)
    labels = (classes + shift) % k
    prior = _ring_mixture(k)
    model = LabelledAdversarialAutoencoder(6, 2, prior=prior, hidden=(32,), d_hidden=(32,))
    keep = torch.rand(len(labels), generator=torch.Generator().manual_seed(4)) < 0.5
    given = torch.where(keep, labels, torch.full_like(labels, -1))  # half unlabelled
    fit_adversarial(model, with_labels(x, given), batch_size=50, num_epochs=100, lr=3e-3,
                    progress=False)
    means = prior.component_distribution.mean  # the independent reference: (K, 2)
    with torch.no_grad():
        codes = model.encode(x)
    for c in range(k):
        centre = codes[labels == c].mean(0)
        distances = (means - centre).norm(dim=1)
        assert int(distances.argmin()) == c, (c, centre, means)
        assert float(distances[c]) < 1.0
    # Per row, the codes are nearest their own component for most rows, labelled or not.
    nearest = torch.cdist(codes, means).argmin(1)
    assert float((nearest == labels).float().mean()) > 0.9


def test_labelled_aae_draws_and_errors():
    torch.manual_seed(0)
    prior = _ring_mixture(3)
    model = LabelledAdversarialAutoencoder(4, 2, prior=prior, hidden=(8,))
    data = with_labels(torch.randn(600, 4), torch.tensor([0, 2, -1]).repeat(200))
    draws = model.adversarial_draws(data)
    assert draws.real.shape == draws.fake.shape == (600, 2 + 3 + 1)
    assert torch.equal(draws.real[:, 2:], draws.fake[:, 2:])
    assert draws.real[0, 2:].tolist() == [1, 0, 0, 0]
    assert draws.real[2, 2:].tolist() == [0, 0, 0, 1]
    means = prior.component_distribution.mean
    real = draws.real[:, :2]
    assert (real[0::3] - means[0]).norm(dim=1).max() < 2.0  # component 0 only
    assert (real[1::3] - means[2]).norm(dim=1).max() < 2.0
    unlabelled = torch.cdist(real[2::3], means).argmin(1)
    assert unlabelled.unique().numel() == 3  # the whole mixture
    with pytest.raises(ValueError, match="MixtureSameFamily"):
        LabelledAdversarialAutoencoder(4, 2, prior=dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pytest.raises(ValueError, match="input_dim \\+ 1 = 5 columns"):
        model.validate(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"whole numbers in -1\.\.2"):
        model.validate(with_labels(torch.randn(3, 4), torch.tensor([0, 3, 1])))
    with pytest.raises(ValueError, match="labels must have shape"):
        with_labels(torch.randn(3, 4), torch.zeros(2))


# ----------------------------------------------------------------------------- resume longer
def _gan(seed: int) -> GAN:
    torch.manual_seed(seed)
    return GAN(3, 2, hidden=(8,), d_hidden=(8,))


def test_adversarial_fit_resumed_with_more_epochs_equals_the_longer_fit(tmp_path):
    x = torch.randn(120, 3, generator=torch.Generator().manual_seed(5))
    settings = {"batch_size": 40, "lr": 3e-3, "lr_decay": 1.0, "d_steps": 2,
                "progress": False, "seed": 2}
    longer_model = _gan(0)
    longer = fit_adversarial(longer_model, x, num_epochs=5, **settings)
    shorter = fit_adversarial(_gan(0), x, num_epochs=2, checkpoint_dir=tmp_path, **settings)
    for name, values in shorter.history.items():  # the first epochs of the longer fit
        assert longer.history[name][: len(values)] == values, name
    fresh = _gan(9)
    extended = fit_adversarial(fresh, x, num_epochs=5, checkpoint_dir=tmp_path, resume=True,
                               **settings)
    assert extended.info["resumed_from"] == 2
    assert extended.history == longer.history
    for key, value in longer_model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"num_epochs was 5 and is now 4.*may only grow"):
        fit_adversarial(_gan(0), x, num_epochs=4, checkpoint_dir=tmp_path, resume=True,
                        **settings)


def test_a_decaying_schedule_still_needs_the_same_epochs(tmp_path):
    x = torch.randn(80, 3, generator=torch.Generator().manual_seed(5))
    settings = {"batch_size": 40, "lr": 3e-3, "lr_decay": 0.5, "progress": False}
    fit_adversarial(_gan(0), x, num_epochs=2, checkpoint_dir=tmp_path, **settings)
    with pytest.raises(ValueError, match="num_epochs was 2 and is now 3 \\(a resumed fit needs"):
        fit_adversarial(_gan(0), x, num_epochs=3, checkpoint_dir=tmp_path, resume=True,
                        **settings)


def test_minibatch_svi_resumed_with_more_epochs_equals_the_longer_fit(tmp_path):
    x = torch.rand(60, 5, generator=torch.Generator().manual_seed(1)).round()
    settings = {"batch_size": 20, "lr": 1e-2, "lr_decay": 1.0, "progress": False, "seed": 3}

    def vae():
        torch.manual_seed(0)
        return VAE(5, 2, hidden=(8,))

    longer = fit_svi(vae(), x, num_epochs=4, **settings)
    fit_svi(vae(), x, num_epochs=2, checkpoint_dir=tmp_path, **settings)
    extended = fit_svi(vae(), x, num_epochs=4, checkpoint_dir=tmp_path, resume=True,
                       **settings)
    assert extended.info["resumed_from"] == 2
    assert extended.history["elbo"] == longer.history["elbo"]


# ----------------------------------------------------------------------------- memory
def test_adversarial_memory_counts_weights_data_and_activations():
    torch.manual_seed(0)
    model = GAN(3, 2, hidden=(8,), d_hidden=(5,))
    estimate = adversarial_memory(model, 1000, 3, batch_size=64, n_test=200)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # the prior's
    assert estimate.resident["networks, gradients and Adam moments (4 copies)"] == (
        4 * weights + buffers)
    assert estimate.resident["training and test data"] == 1200 * 3 * 4
    # By hand, per row (float32): generator Linear(2->8) 8, ReLU 8, Linear(8->3) 3; the
    # discriminator twice (real, fake): Linear(3->5) 5, LeakyReLU 5, Linear(5->1) 1.
    assert step_activation_bytes(model, 3) == (8 + 8 + 3 + 2 * (5 + 5 + 1)) * 4
    training = estimate.phases["training"]
    assert list(training.values()) == [2 * 64 * (8 + 8 + 3 + 22) * 4]
    with pytest.raises(MemoryLimitError, match=r"needs about .* limit is 1.0 kB \(test\)$"):
        check_memory(estimate, 1000, "test")
    check_memory(estimate, estimate.total, "test")  # at the limit: accepted


def test_adversarial_memory_counts_the_code_mmd_of_an_autoencoder():
    model = AdversarialAutoencoder(4, 2, hidden=(8,))
    estimate = adversarial_memory(model, 100, 4, batch_size=10, n_test=1000)
    mmd = estimate.phases["code MMD on the test set"]
    assert mmd["kernel matrices (1000 x 1000, float64)"] == 3 * 1000**2 * 8
    assert estimate.peak_phase == "code MMD on the test set"
    with pytest.raises(ValueError, match="adversarial model"):
        adversarial_memory(VAE(4, 2), 100, 4, batch_size=10)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        adversarial_memory(model, 100, 4, batch_size=0)


# ----------------------------------------------------------------------------- command line
def test_cli_refuses_an_adversarial_fit_over_the_memory_limit(tmp_path, capsys, monkeypatch):
    from ppl_models.cli import main
    from ppl_models.infer.resources import ENV_VAR

    monkeypatch.setenv(ENV_VAR, "10k")
    out = tmp_path / "o"
    assert main(["fit", "gan", "--epochs", "1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs about" in err and "limit is 10.0 kB" in err
    assert not out.exists()
    assert main(["fit", "gan", "--encoder", "gaussian", "--out", str(out), "--quiet"]) == 2
    assert "--encoder does not apply to fit gan" in capsys.readouterr().err
