"""``ppl-models fit vae`` end to end on the bundled digits, and its one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from quality_checks import assert_sample_quality

from ppl_models.cli import main
from ppl_models.cli.fit_vae import PRIORS as VAE_PRIORS
from ppl_models.diagnostics import cluster_confusion
from ppl_models.images import load_images
from ppl_models.infer import load_checkpoint

PRIORS = ("standard", "mog", "vamp", "gmvae")


def _restore(metrics: dict, out) -> torch.nn.Module:
    """A fresh model of the same structure with the checkpoint's networks."""
    args = argparse.Namespace(latent_dim=metrics["latent_dim"],
                              components=metrics["n_components"])
    model = VAE_PRIORS[metrics["prior"]](metrics["n_features"], args,
                                             {"likelihood": metrics["likelihood"]})
    state = load_checkpoint(out / "checkpoint", model)
    assert state["epoch"] == metrics["n_epochs"]
    return model.eval()


def _independent_log_weights(model: torch.nn.Module, x: torch.Tensor, particles: int,
                             seed: int) -> torch.Tensor:
    """``(S, N)`` importance log weights log p(x, z) - log q(z | x), written here from the
    model's networks and torch.distributions (labels of a GMVAE summed out of p and q)."""
    from torch.distributions import Bernoulli, Categorical, Normal

    from ppl_models.models import GMVAE

    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if not isinstance(model, GMVAE):
            q = Normal(*model.encoder(x))
            z = q.sample((particles,))
            log_q = q.log_prob(z).sum(-1)
            log_prior = model.prior_distribution().log_prob(z)
        elif not model.conditional_encoder:  # q(z | x); the label summed out of p(z)
            q = Normal(*model.encoder(x))
            z = q.sample((particles,))
            log_q = q.log_prob(z).sum(-1)
            locs, scales = model.prior.locs, model.prior.log_scales.exp()
            log_pzy = Normal(locs[:, None, None], scales[:, None, None]).log_prob(z).sum(-1)
            log_py = torch.log_softmax(model.prior.logits, -1)[:, None, None]
            log_prior = torch.logsumexp(log_pzy + log_py, 0)
        else:
            k = model.n_clusters
            log_qy = torch.log_softmax(model.classifier(x), -1)  # (N, K)
            y = Categorical(logits=log_qy).sample((particles,))  # (S, N)
            z = Normal(*model.encoder(x, torch.nn.functional.one_hot(y, k))).sample()
            onehots = torch.eye(k).reshape(k, 1, 1, k)
            loc, scale = model.encoder(x, onehots)  # (K, 1, N, L): every label's q(z | x, y)
            log_qzy = Normal(loc, scale).log_prob(z).sum(-1)  # (K, S, N)
            log_q = torch.logsumexp(log_qzy + log_qy.T.unsqueeze(1), 0)
            locs, scales = model.prior.locs, model.prior.log_scales.exp()
            log_pzy = Normal(locs[:, None, None], scales[:, None, None]).log_prob(z).sum(-1)
            log_prior = torch.logsumexp(log_pzy, 0) - math.log(k)
        log_lik = Bernoulli(logits=model.decoder(z)).log_prob(x).sum(-1)
        return (log_lik + log_prior - log_q).double()


def _assert_bounds_ordered(model: torch.nn.Module, x: torch.Tensor, metrics: dict) -> None:
    """The reported ELBO and K-sample bound against each other and an independent L_256.

    Reproduced per test image with the run's seed (their means must be the reported
    figures), then, per image n with independent draws, d_n = L_K(x_n) - ELBO(x_n) has a
    non-negative mean (Burda et al. 2016, Theorem 1: L_1 <= L_K; for the GMVAE the
    enumerated ELBO is at most the label-marginal L_1) and e_n = L_256(x_n) - L_K(x_n) too
    (L_K <= L_K' for K <= K'). Each is checked to three standard errors of the mean of its
    paired differences (297 images). The tempting ``L_K <= ELBO + log K`` is not a theorem:
    for p(z | x) = N(0, 1), q = N(0, 10^2) the ELBO is log p(x) - 47 nats while L_2 is
    about log p(x) - 16, and a one-epoch GMVAE has L_4 - ELBO = 1.49 > log 4 here.
    Bernoulli pixels also bound every one of them by log p(x) <= 0.
    """
    from ppl_models.infer import log_marginal_likelihood

    k, seed = metrics["test_log_likelihood_particles"], metrics["seed"]
    bound = log_marginal_likelihood(model, x, k, seed=seed, pointwise=True).double()
    assert float(bound.mean()) == pytest.approx(metrics["test_log_likelihood"], abs=1e-9)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        terms = model.elbo_terms(x)
    names = list(model.term_names)
    elbo = (terms[names[0]] - sum(terms[name] for name in names[1:])).double()
    assert float(elbo.mean()) == pytest.approx(metrics["test_elbo"], abs=1e-4)  # float32 sums
    reference = torch.logsumexp(_independent_log_weights(model, x, 256, seed + 1), 0)
    reference = reference - math.log(256)
    for low, high in ((elbo, bound), (bound, reference)):
        diff = high - low
        assert float(diff.mean()) >= -3 * float(diff.std()) / math.sqrt(len(diff)), (
            f"mean {float(diff.mean()):.3f}, s.e. {float(diff.std()) / math.sqrt(len(diff)):.3f}")
    for values in (elbo, bound):  # expected values <= log p(x) <= 0, to three s.e.
        assert float(values.mean()) <= 3 * float(values.std()) / math.sqrt(len(values))


@pytest.mark.parametrize("prior", PRIORS)
def test_fit_vae_on_digits_writes_metrics_checkpoint_and_plots(tmp_path, capsys, prior):
    out = tmp_path / prior
    assert main(["fit", "vae", "--prior", prior, "--epochs", "1", "--batch-size", "250",
                 "--components", "10", "--latent-dim", "4", "--particles", "4",
                 "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["model"], metrics["prior"], metrics["n_epochs"]) == ("vae", prior, 1)
    assert metrics["test_log_likelihood_particles"] == 4
    assert (metrics["n_train"], metrics["n_test"], metrics["n_features"]) == (1500, 297, 64)
    assert metrics["epoch_seconds"] > 0
    for key in ("test_elbo", "test_log_likelihood"):
        assert math.isfinite(metrics[key]), key
    assert_sample_quality(metrics["sample_quality"], n_test=297)

    # Independent reference for the test ELBO: Pyro's own estimator on the restored model.
    model = _restore(metrics, out)
    x_test, y_test = load_images("digits", split="test", binarize="threshold")
    _assert_bounds_ordered(model, x_test, metrics)
    loss = TraceEnum_ELBO(max_plate_nesting=1) if prior == "gmvae" else Trace_ELBO()
    pyro.clear_param_store()
    with torch.no_grad():
        elbo = -np.mean([loss.loss(model.model, model.guide, x_test) for _ in range(20)])
    assert metrics["test_elbo"] == pytest.approx(elbo / len(x_test), abs=1.0)

    # Cluster accuracy: absent for the standard prior; else, from the confusion matrix M of
    # the restored model's clusters, at least the best single cell max M_kc / N (a matching
    # of one pair) and at most the purity sum_k max_c M_kc / N (any matching's bound).
    accuracy = metrics["cluster_accuracy"]
    if prior == "standard":
        assert accuracy is None
    else:
        from ppl_models.diagnostics import assign_clusters

        m = cluster_confusion(assign_clusters(model, x_test), y_test)
        assert m.max() / m.sum() - 1e-12 <= accuracy <= m.max(1).sum() / m.sum() + 1e-12

    pngs = {"prior_samples.png", "reconstructions.png", "latent_map.png", "interpolations.png",
            "training_curve.png"}
    if prior == "gmvae":
        pngs.add("cluster_samples.png")
    assert {p.name for p in out.glob("*.png")} == pngs
    for name in pngs:
        assert (out / name).stat().st_size > 1000, name


def test_summary_is_printed(tmp_path, capsys):
    assert main(["fit", "vae", "--epochs", "1", "--particles", "2", "--no-plots",
                 "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "test ELBO" in printed and "log p(x)" in printed
    assert not list((tmp_path / "o").glob("*.png"))


def test_time_limit_ends_the_training_early(tmp_path):
    out = tmp_path / "o"
    assert main(["fit", "vae", "--epochs", "50", "--time-limit", "0.001", "--particles", "2",
                 "--no-plots", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_by"] == "time_limit" and metrics["n_epochs"] == 1
    assert metrics["time_limit"] == 0.001


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "vae", "--data", "nosuch"], "unknown image source"),
        (["fit", "vae", "--data", "mnist:/nonexistent/dir"], "nonexistent"),
        (["fit", "vae", "--steps", "5"], "unrecognized arguments: --steps"),
        (["fit", "vae", "--kl-warmup", "-1"], "kl-warmup"),
        (["fit", "gmm", "--prior", "mog"], "unrecognized arguments: --prior"),
        (["fit", "vae", "--covariance-type", "diag"], "unrecognized arguments: --covariance"),
        (["fit", "vae", "--prior", "bogus"], "invalid choice"),
        (["fit", "vae", "--latent-dim", "0"], "must be a positive integer; got 0"),
        (["fit", "vae", "--likelihood", "poisson"], "invalid choice"),
        (["fit", "vae", "--time-limit", "0"], "must be a positive number; got 0"),
        (["fit", "gmm", "--time-limit", "60"], "unrecognized arguments: --time-limit"),
        (["fit", "vae", "--resume", "--overwrite"], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(tmp_path, capsys, argv, message):
    try:
        code = main([*argv, "--out", str(tmp_path / "o"), "--quiet"])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ killed and resumed
ROOT = Path(__file__).resolve().parents[1]
#: A small run with many steps per epoch, so that it can be killed between epochs 2 and 8.
RESUMABLE = ["fit", "vae", "--epochs", "8", "--batch-size", "10", "--latent-dim", "2",
             "--particles", "2", "--no-plots", "--quiet", "--seed", "3"]


def _command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "ppl_models", *argv]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _killed_after_epoch_2(out: Path) -> Path:
    """Run :data:`RESUMABLE` into ``out`` in a process killed (SIGKILL) as soon as its
    checkpoint holds epoch 2 or later; return the checkpoint file it leaves."""
    checkpoint = out.parent / f".{out.name}.partial" / "checkpoint" / "checkpoint.pt"
    run = subprocess.Popen(_command(*RESUMABLE, "--out", str(out)), env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    epoch = 0
    try:
        while run.poll() is None and epoch < 2:
            if checkpoint.exists():
                with contextlib.suppress(ValueError, FileNotFoundError):  # being replaced
                    epoch = load_checkpoint(checkpoint)["epoch"]
            time.sleep(0.005)
        run.kill()
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == -signal.SIGKILL, (
        f"the run ended (status {run.returncode}) before it could be killed: lengthen "
        f"RESUMABLE\n{stderr.decode()}"
    )
    assert 2 <= load_checkpoint(checkpoint)["epoch"] < 8
    assert not out.exists()
    return checkpoint


def test_a_killed_run_keeps_its_checkpoint_and_a_rerun_without_resume_is_refused(
    tmp_path, capsys
):
    out = tmp_path / "run"
    checkpoint = _killed_after_epoch_2(out)
    before = checkpoint.read_bytes()
    assert main([*RESUMABLE, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "holds the checkpoint of an interrupted run; pass --resume" in err
    assert checkpoint.read_bytes() == before and not out.exists()
    # --overwrite starts again from epoch 0 and ends whole
    assert main([*RESUMABLE, "--overwrite", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_epochs"] == 8 and metrics["resumed"] is False
    assert not checkpoint.parent.parent.exists()
    # a finished run's checkpoint is protected the same way
    finished = (out / "checkpoint" / "checkpoint.pt").read_bytes()
    assert main([*RESUMABLE, "--out", str(out)]) == 2
    assert "holds the checkpoint of an earlier run" in capsys.readouterr().err
    assert (out / "checkpoint" / "checkpoint.pt").read_bytes() == finished


def _tensors(tree, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (parameters, optimiser and scheduler states, RNG states)
    by its path in the tree."""
    if isinstance(tree, torch.Tensor):
        return {where: tree}
    found: dict[str, torch.Tensor] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            found.update(_tensors(value, f"{where}.{key}"))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            found.update(_tensors(value, f"{where}[{i}]"))
    return found


def _assert_same_run(expected: dict, got: dict) -> None:
    """Same tensors (floating to 1e-6, integer ones such as RNG states exactly) and the same
    history, wall-clock entries (names with "second" or "time") aside."""
    a, b = _tensors(expected), _tensors(got)
    assert sorted(a) == sorted(b)
    for where, x in a.items():
        y = b[where]
        assert x.shape == y.shape and x.dtype == y.dtype, where
        if x.is_floating_point():
            torch.testing.assert_close(y, x, rtol=0, atol=1e-6, msg=where)
        else:
            assert torch.equal(x, y), where
    history = {k: v for k, v in expected["history"].items()
               if "second" not in k and "time" not in k}
    assert len(history["elbo"]) == expected["epoch"]
    for key, values in history.items():
        assert got["history"][key] == pytest.approx(values, rel=1e-6, abs=1e-6), key


def test_a_killed_run_resumed_ends_as_an_uninterrupted_one(tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run(_command(*RESUMABLE, "--out", str(reference)), env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "run"
    _killed_after_epoch_2(out)
    done = subprocess.run(_command(*RESUMABLE, "--resume", "--out", str(out)), env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    uninterrupted = load_checkpoint(reference / "checkpoint")
    resumed = load_checkpoint(out / "checkpoint")
    assert resumed["epoch"] == uninterrupted["epoch"] == 8
    _assert_same_run(uninterrupted, resumed)
    expected = json.loads((reference / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    assert got["resumed"] is True
    for key in ("train_elbo", "test_elbo", "test_log_likelihood"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-6), key
