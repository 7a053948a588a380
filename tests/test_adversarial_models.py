"""The adversarial models and their training step: shapes, priors, one update against a
hand-written reference, exact resume, and the errors.

The reference update rewrites Goodfellow et al.'s Algorithm 1 (and the AAE / WAE losses) from
the papers with ``log(sigmoid(.))`` and plain ``torch.optim.Adam``, on a copy of the model with
the same noise; the MMD of the reference is a double loop over the IMQ formula. A resumed fit
must end with the parameters (1e-6) and the history (exactly) of an uninterrupted one, the
resumed model starting from other weights.
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from ppl_models.infer.adversarial import fit_adversarial
from ppl_models.infer.checkpoint import load_checkpoint
from ppl_models.infer.trainer import STEPS, StepInputs
from ppl_models.infer.trainer.steps import AdversarialStep
from ppl_models.models import (
    DCGAN,
    GAN,
    MODELS,
    VAE,
    AdversarialAutoencoder,
    AdversarialModel,
    AmortizedModel,
    InfoGAN,
    LatentModel,
    WassersteinAutoencoder,
)


class Ring(dist.TorchDistribution):
    """A user's own prior with nothing but ``sample``: a noisy circle of radius ``r``."""

    arg_constraints: ClassVar[dict] = {}
    support = dist.constraints.real_vector

    def __init__(self, radius: float = 2.0, noise: float = 0.1) -> None:
        self.radius, self.noise = radius, noise
        super().__init__(torch.Size(), torch.Size([2]))

    def sample(self, sample_shape=()):
        angle = torch.rand(sample_shape) * 2 * math.pi
        r = self.radius + self.noise * torch.randn(sample_shape)
        return torch.stack([r * angle.cos(), r * angle.sin()], -1)


def _mixture(k: int = 4) -> dist.Distribution:
    angles = torch.arange(k) * 2 * math.pi / k
    means = 3 * torch.stack([angles.cos(), angles.sin()], -1)
    return dist.MixtureSameFamily(dist.Categorical(torch.ones(k)),
                                  dist.Normal(means, 0.3).to_event(1))


PRIORS = {
    "mixture": _mixture,
    "uniform": lambda: dist.Uniform(-torch.ones(2), torch.ones(2)),  # batch (2,): one event
    "ring": Ring,
}

MODELS_UNDER_TEST = {
    "gan": lambda: GAN(3, 2, hidden=(8,), d_hidden=(8,)),
    "aae": lambda: AdversarialAutoencoder(3, 2, prior=_mixture(), hidden=(8,), d_hidden=(8,)),
    "wae_mmd": lambda: WassersteinAutoencoder(3, 2, hidden=(8,)),
    "wae_gan": lambda: WassersteinAutoencoder(3, 2, penalty="gan", hidden=(8,), d_hidden=(8,)),
    "infogan": lambda: InfoGAN(3, 2, n_categories=3, n_continuous=2, hidden=(8,),
                               d_hidden=(8,), q_hidden=(8,)),
    "dcgan": lambda: DCGAN(3, channels=(2, 4), output="real"),
}


# ----------------------------------------------------------------------------- shapes, roles
@pytest.mark.parametrize("name", sorted(MODELS_UNDER_TEST))
def test_roles_shapes_and_simulation(name):
    model = MODELS_UNDER_TEST[name]()
    assert isinstance(model, LatentModel) and isinstance(model, AdversarialModel)
    assert not isinstance(model, AmortizedModel)
    assert MODELS[model.name] is type(model)
    d = 784 if name == "dcgan" else 3
    x = torch.randn(5, d)
    draws = model.adversarial_draws(x)
    autoencoder = isinstance(model, AdversarialAutoencoder)
    assert draws.real.shape == draws.fake.shape == (5, 2 if autoencoder else d)
    assert model.generate(7).shape == (7, d)
    trace = poutine.trace(model.model).get_trace(None, n_obs=4)
    assert trace.nodes["z"]["value"].shape == (4, 3 if name == "dcgan" else 2)
    assert trace.nodes["x"]["value"].shape == (4, d)
    if name == "infogan":
        assert trace.nodes["code"]["value"].shape == (4,)
        assert trace.nodes["style"]["value"].shape == (4, 2)
        assert set(draws.context) == {"code", "style"}
        logits, means = model.infer_codes(x)
        assert logits.shape == (5, 3) and means.shape == (5, 2)
    batch = poutine.trace(model.model).get_trace(x[:2], n_obs=5, subsample=torch.tensor([1, 3]))
    assert batch.nodes["x"]["value"].shape == (2, d)
    rebuilt = type(model).from_config(model.config(), dict(model.priors))
    assert rebuilt.config() == model.config()
    if autoencoder:
        assert model.encode(x).shape == (5, 2) and model.decode(draws.fake).shape == (5, 3)
    has_discriminator = name != "wae_mmd"
    assert bool(model.discriminator_parameters()) == has_discriminator
    if has_discriminator:
        assert model.discriminate(draws.real).shape == (5,)


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_aae_takes_any_prior_it_can_sample(prior):
    torch.manual_seed(0)
    model = AdversarialAutoencoder(4, 2, prior=PRIORS[prior](), hidden=(8,), d_hidden=(8,))
    draws = model.adversarial_draws(torch.randn(2000, 4))
    real = draws.real
    assert real.shape == (2000, 2)
    if prior == "ring":  # the user's distribution is what the discriminator sees as real
        torch.testing.assert_close(real.norm(dim=-1).mean(), torch.tensor(2.0), atol=0.02,
                                   rtol=0)
    elif prior == "uniform":
        assert real.min() >= -1 and real.max() <= 1 and real.std(0).min() > 0.5
    else:  # four clusters at radius 3
        torch.testing.assert_close(real.norm(dim=-1).mean(), torch.tensor(3.0), atol=0.1,
                                   rtol=0)
    result = fit_adversarial(model, torch.randn(60, 4), batch_size=20, num_epochs=1,
                             progress=False)
    assert set(result.history) == {"elbo", "beta", "d_loss", "g_loss", "reconstruction"}
    assert all(len(result.history[k]) == 3 for k in ("d_loss", "g_loss", "reconstruction"))
    assert result.method == "adversarial" and result.n_iter == 1


# ----------------------------------------------------------------------------- one update
def _log_d(logits):
    return torch.log(torch.sigmoid(logits))


def _log_not_d(logits):
    return torch.log(1 - torch.sigmoid(logits))


def _imq_mmd_by_loops(a, b, scale):
    def k(u, v):
        d2 = ((u - v) ** 2).sum()
        return sum(c * scale / (c * scale + d2) for c in (0.1, 0.2, 0.5, 1, 2, 5, 10))

    n, m = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def _reference_update(model, x, *, loss, d_steps, lr, d_lr, seed):
    """Goodfellow et al. (2014) Algorithm 1, one iteration, written from the paper."""
    ref = copy.deepcopy(model)
    gan, info = isinstance(ref, GAN), isinstance(ref, InfoGAN)
    g_params = (list(ref.generator.parameters()) if gan
                else [*ref.encoder.parameters(), *ref.decoder.parameters()])
    if info:
        g_params += list(ref.code_inference.parameters())
    g_opt = torch.optim.Adam(g_params, lr=lr, betas=(0.5, 0.999))
    torch.manual_seed(seed)
    codes = {}

    def real_and_fake():
        if info:
            z, codes["c"], codes["s"] = ref._draw(x.shape[0])
            return x, ref.transform(torch.cat(
                [z, torch.eye(ref.n_categories, dtype=x.dtype)[codes["c"]], codes["s"]], -1))
        if gan:
            return x, ref.transform(ref.prior_distribution().sample((x.shape[0],)))
        return ref.prior.sample((x.shape[0],)).to(x.dtype), ref.encoder(x)

    if ref.discriminator is not None:
        d_opt = torch.optim.Adam(ref.discriminator.parameters(), lr=d_lr, betas=(0.5, 0.999))
        for _ in range(d_steps):
            real, fake = real_and_fake()
            d_loss = (-_log_d(ref.discriminator(real)).mean()
                      - _log_not_d(ref.discriminator(fake.detach())).mean())
            d_opt.zero_grad()
            d_loss.backward()
            d_opt.step()
    real, fake = real_and_fake()
    total = torch.zeros((), dtype=x.dtype)
    if not gan:
        total = total + ((x - ref.decoder(fake)) ** 2).sum(-1).mean()
    if ref.discriminator is not None:
        logits = ref.discriminator(fake)
        adv = -_log_d(logits).mean() if loss == "non_saturating" else _log_not_d(logits).mean()
        weight = ref.weight if isinstance(ref, WassersteinAutoencoder) else 1.0
        total = total + weight * adv
    else:
        total = total + ref.weight * _imq_mmd_by_loops(fake, real, ref.kernel_scale)
    if info:  # -lambda (E log Q(c|x) + lambda_s E log N(s; mu(x), 1)), written out
        # Q: its own layers on the (updated) discriminator's body, as in Chen et al. (2016)
        out = ref.code_inference.head(ref.code_inference.trunk(ref.discriminator.trunk(fake)))
        logits, means = out[:, : ref.n_categories], out[:, ref.n_categories:]
        log_q_c = torch.log(torch.softmax(logits, -1))[torch.arange(len(x)), codes["c"]]
        log_q_s = (-0.5 * (codes["s"] - means) ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        total = total - ref.info_weight * (log_q_c.mean()
                                           + ref.continuous_weight * log_q_s.mean())
    g_opt.zero_grad()
    total.backward()
    g_opt.step()
    return ref, total.item()


@pytest.mark.parametrize(("name", "loss", "d_steps"), [
    ("gan", "non_saturating", 1), ("gan", "minimax", 2), ("aae", "non_saturating", 2),
    ("wae_mmd", "non_saturating", 1), ("wae_gan", "minimax", 1),
    ("infogan", "non_saturating", 2), ("dcgan", "minimax", 1),
])
def test_one_update_matches_the_algorithm_written_from_the_papers(name, loss, d_steps):
    torch.manual_seed(3)
    model = MODELS_UNDER_TEST[name]().double()
    if name == "infogan":
        model.continuous_weight = 0.3
    x = torch.randn(6, 784 if name == "dcgan" else 3, dtype=torch.float64)
    reference, total = _reference_update(model, x, loss=loss, d_steps=d_steps, lr=0.01,
                                         d_lr=0.02, seed=11)
    step = AdversarialStep(model, 0.01, 0.5, 10, d_steps=d_steps, loss=loss, d_lr=0.02)
    torch.manual_seed(11)
    value = step(x, n_obs=30, subsample=torch.arange(6))
    assert value == pytest.approx(30 * total, rel=1e-9)
    before = MODELS_UNDER_TEST[name]().double().state_dict()
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, reference.state_dict()[key], atol=1e-8, rtol=0)
        if "prior" not in key:
            assert not torch.equal(tensor, before[key]), key  # every player moved
    expected = {"reconstruction"} if name in ("aae", "wae_mmd", "wae_gan") else set()
    if name == "infogan":
        expected |= {"information"}
    if name == "wae_mmd":
        expected |= {"penalty"}
    else:
        expected |= {"d_loss", "g_loss"}
    assert set(step.records) == expected
    # both schedules decayed by one step of gamma = 0.5 ** (1 / 10)
    assert [s.get_last_lr()[0] for s in step.schedulers] == pytest.approx(
        [0.01 * 0.5**0.1, 0.02 * 0.5**0.1][: len(step.schedulers)])


def test_registry_builds_the_default_game():
    model = GAN(2, 1, hidden=(4,))
    inputs = StepInputs(model, model.model, model.model, None, None, (), 1e-3, 1.0, 5)
    step = STEPS["adversarial"](inputs)
    assert isinstance(step, AdversarialStep)
    assert step.name == "adversarial(non_saturating, d_steps=1)"
    assert len(step.optimizers) == len(step.schedulers) == 2


# ----------------------------------------------------------------------------- resume
SETTINGS = {"batch_size": 40, "num_epochs": 5, "lr": 3e-3, "lr_decay": 0.3, "d_lr": 5e-3,
            "d_steps": 2, "progress": False, "seed": 2}


def _model(name: str, seed: int):
    torch.manual_seed(seed)
    if name == "gan":
        return GAN(3, 2, hidden=(8,), d_hidden=(8,))
    return AdversarialAutoencoder(3, 2, prior=_mixture(), hidden=(8,), d_hidden=(8,))


def _stop_after(epoch: int):
    def callback(e, history):
        if e == epoch:
            raise KeyboardInterrupt
    return callback


@pytest.mark.parametrize(("name", "loss"), [("gan", "minimax"), ("aae", "non_saturating")])
def test_adversarial_fit_interrupted_and_resumed_ends_like_an_uninterrupted_one(
    tmp_path, name, loss
):
    x = torch.randn(120, 3, generator=torch.Generator().manual_seed(5))
    reference_model = _model(name, 0)
    reference = fit_adversarial(reference_model, x, loss=loss, **SETTINGS)
    with pytest.raises(KeyboardInterrupt):
        fit_adversarial(_model(name, 0), x, loss=loss, checkpoint_dir=tmp_path,
                        callback=_stop_after(2), **SETTINGS)
    saved = load_checkpoint(tmp_path)
    assert saved["epoch"] == 2 and len(saved["optimizer_state"]["optimizers"]) == 2
    fresh = _model(name, 9)  # other weights: only the checkpoint can restore them
    resumed = fit_adversarial(fresh, x, loss=loss, checkpoint_dir=tmp_path, resume=True,
                              **SETTINGS)
    assert resumed.info["resumed_from"] == 2
    assert resumed.history == reference.history  # every step's d_loss, g_loss, terms
    assert len(resumed.history["d_loss"]) == 5 * 3
    mine, theirs = fresh.state_dict(), reference_model.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="objective was"):
        fit_adversarial(_model(name, 0), x, loss="non_saturating" if loss == "minimax"
                        else "minimax", checkpoint_dir=tmp_path, resume=True, **SETTINGS)


# ----------------------------------------------------------------------------- training works
def test_wae_mmd_pulls_the_codes_to_the_prior():
    torch.manual_seed(0)
    x = torch.randn(400, 3) @ torch.tensor([[3.0, 0, 0], [0, 0.2, 0], [1.0, 0, 2.0]])
    model = WassersteinAutoencoder(3, 2, hidden=(16,), kernel="gaussian", kernel_scale=1.0)
    prior_draws = torch.randn(400, 2)

    def distance():
        with torch.no_grad():
            return float(_gaussian_mmd(model.encode(x), prior_draws))

    before = distance()
    result = fit_adversarial(model, x, batch_size=100, num_epochs=40, lr=1e-2,
                             progress=False)
    after = distance()
    assert after < 0.2 * before, (before, after)
    assert result.history["reconstruction"][-1] < result.history["reconstruction"][0]


def _gaussian_mmd(a, b):
    d = lambda u, v: torch.exp(-((u[:, None] - v[None]) ** 2).sum(-1) / 2)  # noqa: E731
    n, m = len(a), len(b)
    kaa, kbb = d(a, a), d(b, b)
    return ((kaa.sum() - kaa.trace()) / (n * (n - 1)) + (kbb.sum() - kbb.trace()) / (m * (m - 1))
            - 2 * d(a, b).mean())


# ----------------------------------------------------------------------------- errors
def test_errors_name_the_problem():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="needs an AdversarialModel"):
        fit_adversarial(VAE(3, 2, likelihood="gaussian"), x)
    with pytest.raises(ValueError, match="loss must be one of"):
        fit_adversarial(GAN(3), x, loss="wasserstein")
    with pytest.raises(ValueError, match="d_steps must be"):
        fit_adversarial(GAN(3), x, d_steps=0)
    with pytest.raises(ValueError, match=r"codes of size latent_dim=2 .* got batch \(\), event "
                                         r"\(3,\)"):
        AdversarialAutoencoder(3, 2, prior=dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pytest.raises(ValueError, match="prior must be a Pyro"):
        AdversarialAutoencoder(3, 2, prior="mog")
    with pytest.raises(ValueError, match="penalty must be one of"):
        WassersteinAutoencoder(3, 2, penalty="kl")
    with pytest.raises(ValueError, match="no variance to set the IMQ scale"):
        WassersteinAutoencoder(3, 2, prior=Ring())
    with pytest.raises(ValueError, match="the GAN generates 3 features"):
        GAN(3).validate(torch.randn(4, 2))
    with pytest.raises(ValueError, match="needs data in \\[0, 1\\]"):
        AdversarialAutoencoder(3, reconstruction="cross_entropy").validate(x)

    shared = GAN(3)
    shared.discriminator.head = shared.generator.net[-1]  # a player's layer given to both
    with pytest.raises(ValueError, match="must be disjoint"):
        AdversarialStep(shared, 1e-3, 1.0, 1)


def test_fit_svi_points_an_adversarial_objective_to_fit_adversarial():
    from ppl_models.infer import fit_svi

    model = GAN(2, latent_dim=1)
    with pytest.raises(ValueError, match=r"objective='adversarial'.*fit_adversarial"):
        fit_svi(model, torch.randn(8, 2), objective="adversarial", num_steps=1, progress=False)


@pytest.mark.parametrize("name", sorted(MODELS_UNDER_TEST))
def test_saved_adversarial_fit_loads_with_its_networks(name, tmp_path):
    from ppl_models.infer import FitResult

    model = MODELS_UNDER_TEST[name]()
    width = 784 if name == "dcgan" else 3
    data = torch.rand(16, width)
    result = fit_adversarial(model, data, batch_size=8, num_epochs=1, progress=False)
    result.save(tmp_path / "fit")
    if name == "aae":  # a mixture prior has no saved form (a warning says so)
        with pytest.warns(UserWarning, match=r"priors \['z'\] could not be saved"):
            loaded = FitResult.load(tmp_path / "fit")
    else:
        loaded = FitResult.load(tmp_path / "fit")
    assert loaded.method == "adversarial"
    saved, back = result.model.state_dict(), loaded.model.state_dict()
    assert set(saved) == set(back)
    for key, value in saved.items():  # the networks themselves, not a fresh initialisation
        assert torch.equal(value, back[key]), key
