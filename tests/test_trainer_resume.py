"""Exact resume, checkpoint folders, and the trainer's step registry.

The reference for every resume is an uninterrupted fit with the same settings, run here from
scratch: a resumed fit must end with its parameters (to 1e-6) and its history (exactly). The
interruptions are real: an exception from a callback, a monkeypatched SVI step, and a
separate Python process killed with SIGKILL. The resumed model starts from other weights
(another seed), so only the checkpoint can carry it to the reference.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from ppl_models.data import load
from ppl_models.images import load_images
from ppl_models.infer.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ppl_models.infer.svi import TrainerConfig, fit_svi
from ppl_models.infer.trainer import STEPS, Callback, Step, StepInputs
from ppl_models.models import GaussianMixture
from ppl_models.models.mixture_vae import MixtureOfGaussiansPrior
from ppl_models.models.vae import VAE

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"batch_size": 300, "num_epochs": 6, "lr": 3e-3, "lr_decay": 0.2,
            "kl_warmup_epochs": 3, "binarize": "dynamic", "progress": False}


@pytest.fixture(scope="module")
def grey():
    return load_images("digits", binarize="dynamic")[0]


def _vae(seed: int) -> VAE:
    torch.manual_seed(seed)
    return VAE(64, 3, hidden=(16,))


def _stop_after(epoch: int):
    def callback(e, history):
        if e == epoch:
            raise KeyboardInterrupt
    return callback


def _assert_same_fit(resumed, reference, model=None, reference_model=None):
    assert resumed.history == reference.history  # every epoch's ELBO, beta and terms
    assert resumed.n_iter == reference.n_iter
    if model is not None:
        mine, theirs = model.state_dict(), reference_model.state_dict()
        assert mine.keys() == theirs.keys()
        for name in mine:
            torch.testing.assert_close(mine[name], theirs[name], atol=1e-6, rtol=0)
    for name in reference.params:
        torch.testing.assert_close(resumed.params[name], reference.params[name], atol=1e-6,
                                   rtol=0)


@pytest.mark.parametrize("objective", ["model", "pyro"])
def test_minibatch_fit_interrupted_and_resumed_ends_like_an_uninterrupted_one(
    tmp_path, grey, objective
):
    reference_model = _vae(0)
    reference = fit_svi(reference_model, grey, objective=objective, **SETTINGS)
    assert reference.info["objective"] == ("VAE.elbo_terms" if objective == "model" else "pyro")
    model = _vae(0)
    with pytest.raises(KeyboardInterrupt):
        fit_svi(model, grey, objective=objective, checkpoint_dir=tmp_path,
                callback=_stop_after(2), **SETTINGS)
    assert load_checkpoint(tmp_path)["epoch"] == 2
    pyro.clear_param_store()
    fresh = _vae(7)  # other weights: the checkpoint must restore them
    resumed = fit_svi(fresh, grey, objective=objective, checkpoint_dir=tmp_path, resume=True,
                      **SETTINGS)
    assert resumed.info["resumed_from"] == 2 and resumed.info["num_steps"] == 6 * 5
    assert resumed.history["beta"] == [0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0]
    _assert_same_fit(resumed, reference, fresh, reference_model)
    assert load_checkpoint(tmp_path)["epoch"] == 6


def test_time_limited_run_resumed_with_another_limit(tmp_path, grey):
    reference = fit_svi(_vae(0), grey, **SETTINGS)
    first = fit_svi(_vae(0), grey, checkpoint_dir=tmp_path, time_limit=0.3,
                    callback=lambda e, h: time.sleep(0.2), **SETTINGS)
    assert first.info["stopped_by"] == "time_limit" and first.n_iter < 6
    model = _vae(3)
    resumed = fit_svi(model, grey, checkpoint_dir=tmp_path, resume=True, time_limit=1e6,
                      **SETTINGS)
    assert resumed.info["resumed_from"] == first.n_iter
    assert resumed.info["stopped_by"] == "num_epochs"
    _assert_same_fit(resumed, reference)


def test_trainer_config_is_an_alternative_to_the_keywords(tmp_path, grey):
    config = TrainerConfig(batch_size=300, num_epochs=3, lr=3e-3, kl_warmup_epochs=2, seed=4)
    by_config = fit_svi(_vae(0), grey, config=config, binarize="dynamic", progress=False)
    by_keywords = fit_svi(_vae(0), grey, batch_size=300, num_epochs=3, lr=3e-3,
                          kl_warmup_epochs=2, seed=4, binarize="dynamic", progress=False)
    assert by_config.history == by_keywords.history and by_config.seed == 4
    with pytest.raises(ValueError, match=r"pass either config or \['batch_size'\]"):
        fit_svi(_vae(0), grey, config=config, batch_size=100, binarize="dynamic")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TrainerConfig(batch_size=0)


def _faithful_fit(tmp_path=None, **kwargs):
    x, _ = load("faithful")
    return fit_svi(GaussianMixture(2), x, guide="mean_field", num_steps=60, num_draws=20,
                   checkpoint_dir=tmp_path, checkpoint_every=20, progress=False, **kwargs)


def test_full_batch_fit_interrupted_and_resumed_ends_like_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    reference = _faithful_fit()
    reference_store = {k: v.detach().clone()
                       for k, v in pyro.get_param_store().named_parameters()}
    step = SVI.step
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 31:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(SVI, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _faithful_fit(tmp_path)
    monkeypatch.setattr(SVI, "step", step)
    state = load_checkpoint(tmp_path)
    assert state["mode"] == "full_batch" and state["epoch"] == 20
    assert len(state["history"]["elbo"]) == 20
    assert set(state["optimizer_state"]["pyro_optim"]) == set(reference_store)
    pyro.clear_param_store()
    resumed = _faithful_fit(tmp_path, resume=True)
    assert resumed.info["resumed_from"] == 20
    _assert_same_fit(resumed, reference)
    for name, value in pyro.get_param_store().named_parameters():
        torch.testing.assert_close(value.detach(), reference_store[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(resumed.draws["locs"], reference.draws["locs"], atol=1e-6,
                               rtol=0)  # the RNG continues too


_KILLED_RUN = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    from ppl_models.images import load_images
    from ppl_models.infer import fit_svi
    from ppl_models.models.vae import VAE
    grey = load_images("digits", binarize="dynamic")[0]
    torch.manual_seed(0)
    model = VAE(64, 3, hidden=(16,))
    fit_svi(model, grey, batch_size=300, num_epochs=6, lr=3e-3, lr_decay=0.2,
            kl_warmup_epochs=3, binarize="dynamic", progress=False,
            checkpoint_dir=sys.argv[1], callback=lambda e, h: time.sleep(1.0))
""")


def _wait_for_epoch(path: Path, epoch: int, process: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("the fit ended before it was killed")
        if (path / CHECKPOINT_NAME).is_file():
            done = load_checkpoint(path)["epoch"]
            if done >= epoch:
                return done
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of epoch {epoch} within {timeout} s")


def test_fit_killed_by_sigkill_resumes_to_the_uninterrupted_numbers(tmp_path, grey):
    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr.txt", "w") as log:
        process = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(folder)], cwd=ROOT,
                                   env=env, stderr=log)
        try:
            killed_at = _wait_for_epoch(folder, 2, process, timeout=120)
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    at_kill = load_checkpoint(folder)["epoch"]
    assert 2 <= killed_at <= at_kill < 6, (tmp_path / "stderr.txt").read_text()
    reference_model = _vae(0)
    reference = fit_svi(reference_model, grey, **SETTINGS)
    model = _vae(5)
    resumed = fit_svi(model, grey, checkpoint_dir=folder, resume=True, **SETTINGS)
    assert resumed.info["resumed_from"] == at_kill
    _assert_same_fit(resumed, reference, model, reference_model)


def test_rerun_without_resume_is_refused_and_the_checkpoint_is_untouched(tmp_path, grey):
    fit_svi(_vae(0), grey, checkpoint_dir=tmp_path, **{**SETTINGS, "num_epochs": 2})
    path = tmp_path / CHECKPOINT_NAME
    before = path.read_bytes()
    with pytest.raises(ValueError, match=(
        r"holds a checkpoint from epoch 2: pass resume=True to continue it or remove it"
    )) as caught:
        fit_svi(_vae(0), grey, checkpoint_dir=tmp_path, **{**SETTINGS, "num_epochs": 2})
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == before
    # overwrite=True discards it deliberately: the new fit starts from epoch 0.
    again = fit_svi(_vae(0), grey, checkpoint_dir=tmp_path, overwrite=True,
                    **{**SETTINGS, "num_epochs": 1})
    assert again.info["resumed_from"] is None and load_checkpoint(tmp_path)["epoch"] == 1
    x, _ = load("faithful")
    fit_svi(GaussianMixture(2), x, num_steps=5, checkpoint_dir=tmp_path / "full",
            progress=False)
    with pytest.raises(ValueError, match="holds a checkpoint from step 5"):
        fit_svi(GaussianMixture(2), x, num_steps=5, checkpoint_dir=tmp_path / "full")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 250}, "batch_size was 300 and is now 250"),
        ({"seed": 1}, "seed was 0 and is now 1"),
        ({"kl_warmup_epochs": 0}, "kl_warmup_epochs was 3 and is now 0"),
        ({"binarize": None}, "binarize was 'dynamic' and is now None"),
        ({"objective": "pyro"}, "objective was 'VAE.elbo_terms' and is now 'pyro'"),
    ],
)
def test_resume_with_other_settings_is_refused(tmp_path, grey, change, message):
    fit_svi(_vae(0), grey, checkpoint_dir=tmp_path, **{**SETTINGS, "num_epochs": 1})
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    binary = change.get("binarize", "dynamic") is None  # the VAE then needs binary pixels
    with pytest.raises(ValueError, match=message):
        fit_svi(_vae(0), (grey > 0.5).float() if binary else grey, checkpoint_dir=tmp_path,
                resume=True, **{**SETTINGS, "num_epochs": 1, **change})
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


def test_checkpoint_of_the_other_mode_or_another_model_is_refused(tmp_path, grey):
    x, _ = load("faithful")
    fit_svi(GaussianMixture(2), x, num_steps=5, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="written by a full-batch fit and this is a minibatch"):
        fit_svi(_vae(0), grey, checkpoint_dir=tmp_path, resume=True, **SETTINGS)
    fit_svi(_vae(0), grey, checkpoint_dir=tmp_path / "vae", **{**SETTINGS, "num_epochs": 1})
    torch.manual_seed(0)
    wider = VAE(64, 3, hidden=(32,))
    with pytest.raises(ValueError, match="the networks differ"):
        fit_svi(wider, grey, checkpoint_dir=tmp_path / "vae", resume=True,
                **{**SETTINGS, "num_epochs": 1})
    with pytest.raises(ValueError, match="resume and overwrite need checkpoint_dir"):
        fit_svi(_vae(0), grey, resume=True, **SETTINGS)
    with pytest.raises(ValueError, match="not both"):
        fit_svi(_vae(0), grey, checkpoint_dir=tmp_path, resume=True, overwrite=True,
                **SETTINGS)


def test_model_and_pyro_steps_give_the_same_loss_on_the_same_batch_and_noise(grey):
    # With a mixture prior the KL has no closed form, so the model's estimator is
    # log p(x|z) + log p(z) - log q(z|x) at one z, as Pyro's Trace_ELBO: the two steps
    # differ only by who computes it. lr=0 keeps the networks fixed.
    torch.manual_seed(0)
    model = VAE(64, 3, prior=MixtureOfGaussiansPrior(4), hidden=(16,))
    x = torch.bernoulli(grey[:50], generator=torch.Generator().manual_seed(1))
    rows = torch.arange(50)
    losses = {}
    for name in ("model", "pyro"):
        pyro.clear_param_store()
        inputs = StepInputs(model, model.model, model.guide, Trace_ELBO(), None, (), 0.0, 1.0, 1)
        step = STEPS[name](inputs)
        step.prepare(x, n_obs=1500, subsample=rows)
        torch.manual_seed(11)
        losses[name] = step(x, n_obs=1500, subsample=rows)
    assert losses["model"] == pytest.approx(losses["pyro"], rel=1e-5)
    torch.manual_seed(12)  # other noise: another value (the comparison above can fail)
    assert step(x, n_obs=1500, subsample=rows) != pytest.approx(losses["pyro"], rel=1e-5)



class _Patience(Callback):
    """Stops after ``epochs`` epochs; records what it was shown."""

    name = "patience"

    def __init__(self, epochs):
        self.epochs, self.seen = epochs, []

    def on_epoch_end(self, epoch, history):
        self.seen.append((epoch, list(history["elbo"])))
        return epoch >= self.epochs


def test_a_callback_object_plugs_into_the_trainer(grey):
    callback = _Patience(2)
    result = fit_svi(_vae(0), grey, callback=callback, **SETTINGS)
    assert result.info["stopped_by"] == "patience" and result.n_iter == 2
    assert [e for e, _ in callback.seen] == [1, 2]
    assert callback.seen[-1][1] == result.history["elbo"]
    with pytest.raises(ValueError, match="callback must be callable"):
        fit_svi(_vae(0), grey, callback=3, **SETTINGS)


class _TwoPlayers(Step):
    """Encoder and decoder moved by two optimisers with two schedules: the shape of an
    adversarial step. ``LambdaLR`` computes the rate from its own step count, so a resume
    that lost the schedulers' state would change the numbers."""

    name = "two_players"

    def __init__(self, inputs: StepInputs) -> None:
        super().__init__()
        self.model = inputs.model
        encoder = torch.optim.Adam(self.model.encoder.parameters(), lr=inputs.lr)
        decoder = torch.optim.SGD(self.model.decoder.parameters(), lr=inputs.lr, momentum=0.9)
        self.optimizers = [encoder, decoder]
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(encoder, lambda t: 1 / (1 + t)),
                           torch.optim.lr_scheduler.LambdaLR(decoder, lambda t: 0.9**t)]

    def __call__(self, x, *, n_obs, subsample):
        terms = self.model.elbo_terms(x)
        loss = -(terms["reconstruction"] - self.beta * terms["kl"]).sum() * n_obs / x.shape[0]
        for optimizer in self.optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer, scheduler in zip(self.optimizers, self.schedulers, strict=True):
            optimizer.step()
            scheduler.step()
        return loss.item()


def test_a_registered_step_with_two_optimisers_resumes_exactly(tmp_path, grey, monkeypatch):
    monkeypatch.setitem(STEPS, "two_players", _TwoPlayers)
    settings = {**SETTINGS, "objective": "two_players", "lr": 1e-2}
    reference_model = _vae(0)
    reference = fit_svi(reference_model, grey, **settings)
    assert reference.info["objective"] == "two_players"
    with pytest.raises(KeyboardInterrupt):
        fit_svi(_vae(0), grey, checkpoint_dir=tmp_path, callback=_stop_after(3), **settings)
    state = load_checkpoint(tmp_path)["optimizer_state"]
    assert len(state["optimizers"]) == len(state["schedulers"]) == 2
    assert state["schedulers"][1]["last_epoch"] == 3 * 5
    model = _vae(2)
    resumed = fit_svi(model, grey, checkpoint_dir=tmp_path, resume=True, **settings)
    _assert_same_fit(resumed, reference, model, reference_model)
