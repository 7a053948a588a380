"""fit_svi in minibatch mode: plate scaling, KL warm-up, checkpoints, dynamic binarization.

References are independent of the driver: the full-data ELBO computed directly from the
model's terms (which the scaled minibatch estimates must average to), the KL known from the
closed form of KL(N(m, s^2) || N(0, 1)), files read back with torch.load, and the mixtures'
existing full-batch behaviour.
"""

from __future__ import annotations

import math
import time

import pyro
import pytest
import torch

from ppl_models.data import load
from ppl_models.images import load_images
from ppl_models.infer.evaluation import elbo_terms
from ppl_models.infer.svi import CHECKPOINT_NAME, fit_svi, kl_weight, load_checkpoint
from ppl_models.models import GaussianMixture
from ppl_models.models.vae import VAE


@pytest.fixture(scope="module")
def digits():
    return load_images("digits", binarize="threshold")[0]


def _shifted_vae(seed: int = 0) -> VAE:
    """A small VAE whose encoder means sit ~3 away from the prior: a KL of ~18 nats."""
    torch.manual_seed(seed)
    model = VAE(64, 4, hidden=(32,))
    with torch.no_grad():
        model.encoder.head.bias[:4] += 3.0
    return model


def test_guide_none_is_the_models_own_guide_else_mean_field(digits):
    model = VAE(64, 2, hidden=(16,))
    result = fit_svi(model, digits, batch_size=500, num_epochs=1, progress=False)
    assert result.guide == model.guide and result.info["guide"] == "VAE.guide"
    x, _ = load("faithful")
    default = fit_svi(GaussianMixture(2), x, num_steps=30, num_draws=5)
    explicit = fit_svi(GaussianMixture(2), x, guide="mean_field", num_steps=30, num_draws=5)
    assert default.info["guide"] == "mean_field"
    assert default.history == explicit.history  # the mixtures get what they got before
    assert torch.equal(default.params["locs"], explicit.params["locs"])


@pytest.mark.parametrize("objective", ["model", "pyro"])
def test_minibatch_estimates_average_to_the_full_data_elbo(digits, objective):
    # lr=0 freezes the networks: each step's N/B-scaled batch ELBO is an unbiased estimate
    # of the full-data ELBO, whatever B. A missing or wrong N/B factor is off by ~x15.
    model = _shifted_vae()
    full = elbo_terms(model, digits)["elbo"]  # per observation, all 1500 rows at once
    for batch_size in (100, 1500):
        result = fit_svi(model, digits, batch_size=batch_size, num_epochs=5, lr=0.0,
                         objective=objective, progress=False)
        estimate = sum(result.history["elbo"]) / 5
        # s.e. of a 5-epoch mean: < 0.1 nat (analytic KL) / < 0.2 (Monte-Carlo KL)
        assert estimate == pytest.approx(full, abs=0.6), batch_size


@pytest.mark.parametrize("objective", ["model", "pyro"])
def test_kl_warmup_weights_the_kl_term(digits, objective):
    assert [kl_weight(e, 3) for e in range(5)] == [0.0, 1 / 3, 2 / 3, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0
    model = _shifted_vae()
    with torch.no_grad():
        loc, scale = model.encoder(digits)
        kl = float((0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)).mean())
    assert kl > 10
    result = fit_svi(model, digits, batch_size=500, num_epochs=5, lr=0.0, kl_warmup_epochs=3,
                     objective=objective, progress=False)
    assert result.history["beta"] == [0.0, 1 / 3, 2 / 3, 1.0, 1.0]
    # objective_e = E[log p(x|z)] - beta_e KL; the reconstruction's noise is < 0.5 nat.
    elbo = result.history["elbo"]
    rec = result.history["reconstruction"][0]
    for beta, value in zip(result.history["beta"], elbo, strict=True):
        assert value == pytest.approx(rec - beta * kl, abs=1.0)


def test_checkpoint_is_written_every_epoch_and_reloads_the_networks(tmp_path, digits):
    model = VAE(64, 3, hidden=(16,))
    result = fit_svi(model, digits, batch_size=300, num_epochs=3, lr=3e-3,
                     checkpoint_dir=tmp_path, progress=False)
    path = tmp_path / CHECKPOINT_NAME
    assert result.info["checkpoint"] == str(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]  # no leftovers
    state = torch.load(path, weights_only=True)  # tensors and plain values only
    assert state["epoch"] == 3 and state["history"] == result.history
    fresh = VAE(64, 3, hidden=(16,))
    with torch.no_grad():
        assert not torch.allclose(fresh.encoder(digits[:5])[0], model.encoder(digits[:5])[0])
    loaded = load_checkpoint(tmp_path, fresh)
    with torch.no_grad():
        assert torch.equal(fresh.encoder(digits[:5])[0], model.encoder(digits[:5])[0])
        assert torch.equal(fresh.decoder(torch.ones(2, 3)), model.decoder(torch.ones(2, 3)))
    adam = torch.optim.Adam(fresh.parameters())
    adam.load_state_dict(loaded["optimizer_state"]["optimizers"][0])
    assert len(adam.state) == len(list(fresh.parameters()))
    # One epoch: the checkpoint says epoch 1 (it is written at the end of each epoch).
    fit_svi(VAE(64, 3, hidden=(16,)), digits, batch_size=300, num_epochs=1,
            checkpoint_dir=tmp_path / "one", progress=False)
    assert load_checkpoint(tmp_path / "one" / CHECKPOINT_NAME)["epoch"] == 1
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[: len(raw) // 2], "corrupt checkpoint"),
        (lambda raw: b"not a checkpoint", "corrupt checkpoint"),
    ],
)
def test_corrupt_checkpoint_is_refused(tmp_path, digits, damage, message):
    fit_svi(VAE(64, 3, hidden=(16,)), digits, batch_size=300, num_epochs=1,
            checkpoint_dir=tmp_path, progress=False)
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=message):
        load_checkpoint(tmp_path)


def test_checkpoint_without_its_keys_is_refused(tmp_path):
    torch.save({"epoch": 3}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match=r"missing.*model_state"):
        load_checkpoint(tmp_path)


def test_pyro_path_checkpoint_holds_the_param_store(tmp_path, digits):
    fit_svi(VAE(64, 3, hidden=(16,)), digits, batch_size=500, num_epochs=1, objective="pyro",
            checkpoint_dir=tmp_path, progress=False)
    state = load_checkpoint(tmp_path)
    names = set(state["param_store"])
    assert "encoder$$$head.weight" in names and "decoder$$$net.2.weight" in names


class _Recording(VAE):
    """A VAE that keeps every training batch it is given (a spy on the data loader)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[torch.Tensor] = []

    def elbo_terms(self, x):
        if torch.is_grad_enabled():  # training steps, not the evaluation batch
            self.batches.append(x.clone())
        return super().elbo_terms(x)


def test_dynamic_binarization_draws_fresh_binary_batches(digits):
    grey, _ = load_images("digits", binarize="dynamic")
    model = _Recording(64, 2, hidden=(16,))
    result = fit_svi(model, grey, batch_size=1500, num_epochs=3, binarize="dynamic",
                     progress=False)
    assert result.info["binarize"] == "dynamic" and torch.equal(result.data, grey)
    first, second, _ = model.batches  # one batch per epoch: all 1500 rows, shuffled
    assert set(torch.cat(model.batches).unique().tolist()) == {0.0, 1.0}
    # Each batch's pixels are Bernoulli(intensity): means agree, draws differ. A reshuffle
    # of one binarization would leave every pixel's column sum unchanged; independent draws
    # move it by |N(0, 2 sum_n p(1-p))|, of mean sqrt(2 var) sqrt(2/pi) per column.
    assert float(first.mean()) == pytest.approx(float(grey.mean()), abs=0.005)
    moved = float(first.sum(0).sub(second.sum(0)).abs().sum())
    expected = float((2 * (grey * (1 - grey)).sum(0)).sqrt().sum()) * math.sqrt(2 / math.pi)
    assert 0.7 * expected < moved < 1.3 * expected
    again = _Recording(64, 2, hidden=(16,))
    fit_svi(again, grey, batch_size=1500, num_epochs=1, binarize="dynamic", progress=False)
    assert torch.equal(again.batches[0], first)  # seeded
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        fit_svi(VAE(64, 2), grey * 2, batch_size=100, binarize="dynamic")


def test_no_global_sites_gives_an_empty_point_estimate_in_both_modes(digits):
    model = VAE(64, 2, hidden=(16,))
    full = fit_svi(model, digits[:200], num_steps=20, progress=False)
    assert full.params == {} and full.draws is None and len(full.history["elbo"]) == 20
    assert all(map(math.isfinite, full.history["elbo"]))
    mini = fit_svi(model, digits, batch_size=256, num_epochs=2, optim=pyro.optim.Adam({"lr": 1e-3}),
                   progress=False)
    assert mini.info["objective"] == "pyro" and mini.n_iter == 2
    assert mini.info["num_steps"] == 2 * math.ceil(1500 / 256)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kl_warmup_epochs": 2}, "kl_warmup_epochs needs minibatch mode"),
        ({"binarize": "dynamic"}, "binarize needs minibatch mode"),
        ({"batch_size": 10, "binarize": "threshold"}, "binarize must be None or 'dynamic'"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"num_epochs": 0}, "num_epochs must be a positive integer"),
        ({"num_epochs": 1, "kl_warmup_epochs": -1}, "kl_warmup_epochs must be a non-negative"),
        ({"num_epochs": 1, "objective": "fast"}, "objective must be one of"),
        ({"num_epochs": 1, "guide": "mean_field", "init": "prior", "objective": "model"},
         "the guide is not the model's own"),
        ({"num_epochs": 1, "num_particles": 2, "objective": "model"}, "num_particles > 1"),
        ({"time_limit": 5.0}, "time_limit needs minibatch mode"),
        ({"callback": print}, "callback needs minibatch mode"),
        ({"num_epochs": 1, "time_limit": 0}, "time_limit must be a positive number"),
        ({"num_epochs": 1, "callback": 3}, "callback must be callable"),
    ],
)
def test_bad_minibatch_arguments_are_refused(kwargs, message, digits):
    with pytest.raises(ValueError, match=message):
        fit_svi(VAE(64, 2, hidden=(8,)), digits, **kwargs)


def test_callback_sees_every_epoch_and_can_stop_the_fit(digits):
    seen = []

    def callback(epoch, history):
        seen.append((epoch, len(history["elbo"]), history["elbo"][-1]))
        return epoch == 3

    result = fit_svi(VAE(64, 2, hidden=(8,)), digits, batch_size=500, num_epochs=10,
                     callback=callback, progress=False)
    assert [s[:2] for s in seen] == [(1, 1), (2, 2), (3, 3)]
    assert [s[2] for s in seen] == result.history["elbo"]
    assert result.info["stopped_by"] == "callback" and result.n_iter == 3


def test_time_limit_stops_after_the_epoch_that_passes_it(digits):
    clock = []

    def slow(epoch, history):  # each epoch takes at least 0.2 s
        time.sleep(0.2)
        clock.append(time.perf_counter())

    result = fit_svi(VAE(64, 2, hidden=(8,)), digits, batch_size=500, num_epochs=50,
                     time_limit=0.5, callback=slow, progress=False)
    assert result.info["stopped_by"] == "time_limit"
    assert 3 <= result.n_iter <= 4 and result.n_iter == len(clock)
    unlimited = fit_svi(VAE(64, 2, hidden=(8,)), digits, batch_size=500, num_epochs=2,
                        time_limit=1e6, progress=False)
    assert unlimited.info["stopped_by"] == "num_epochs" and unlimited.n_iter == 2


def test_models_without_subsampling_are_refused_minibatches():
    x, _ = load("faithful")
    with pytest.raises(ValueError, match="takes n_obs= and subsample="):
        fit_svi(GaussianMixture(2), x, batch_size=50, num_epochs=1)
    with pytest.raises(ValueError, match="needs a model with its own guide"):
        fit_svi(GaussianMixture(2), x, guide="model", num_steps=1)
