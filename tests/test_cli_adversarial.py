"""``ppl-models fit aae|wae|gan|dcgan|infogan`` end to end on the bundled digits (tiny
networks, one or a few epochs), its one-line refusals and an interrupted run resumed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from quality_checks import assert_sample_quality

import ppl_models.infer
from ppl_models.cli import main
from ppl_models.images import load_images
from ppl_models.infer import FitResult, load_checkpoint

SMALL = ["--epochs", "1", "--batch-size", "150", "--hidden", "16", "--quiet"]

FILES = {
    "aae": {"latent_map.png"},
    "wae": {"latent_map.png"},
    "gan": set(),
    "infogan": {"traversals.png"},
}


def _strict_json(path) -> dict:
    def refuse(name: str):
        raise AssertionError(f"{path} holds the non-JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("model", sorted(FILES))
def test_each_model_writes_its_files_and_finite_losses(tmp_path, capsys, model):
    out = tmp_path / model
    assert main(["fit", model, *SMALL, "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""
    pngs = {"samples.png", "training_curve.png"} | FILES[model]
    assert {p.name for p in out.glob("*.png")} == pngs
    for name in pngs:
        assert (out / name).stat().st_size > 1000, name
    metrics = _strict_json(out / "metrics.json")
    assert (metrics["model"], metrics["n_epochs"], metrics["n_train"]) == (model, 1, 1500)
    fit = FitResult.load(out / "fit")
    assert fit.method == "adversarial" and fit.model.name == model
    steps = math.ceil(1500 / 150)
    has_discriminator = model != "wae"  # WAE-MMD (the default penalty) has none
    names = (["d_loss", "g_loss"] if has_discriminator else []) + list(
        metrics["generator_terms"])
    assert names, "no loss reported"
    for name in names:
        value = metrics["generator_terms"].get(name, metrics.get(name))
        assert math.isfinite(value), name
        # the per-step history of the saved fit, averaged by hand over the epoch's steps
        assert len(fit.history[name]) == steps, name
        assert value == pytest.approx(sum(fit.history[name]) / steps, rel=1e-12), name
    if has_discriminator:
        # L_D = E softplus(-real) + E softplus(fake) > 0; an untrained D is near 2 log 2
        assert 0 < metrics["d_loss"] < 10
        assert metrics["g_loss"] > 0  # non-saturating: E softplus(-logit) > 0
    else:
        assert metrics["d_loss"] is None and metrics["g_loss"] is None
    assert_sample_quality(metrics["sample_quality"], n_test=297)
    assert (out / "classifier.pt").is_file()


def _imq(a: np.ndarray, b: np.ndarray, base: float) -> np.ndarray:
    """The IMQ kernel sum_s C_s / (C_s + |a - b|^2), C_s = s * base (Tolstikhin et al. 2018)."""
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return sum(s * base / (s * base + d2) for s in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0))


def _mmd_unbiased(x: np.ndarray, y: np.ndarray, base: float) -> float:
    """Gretton et al. (2012), Lemma 6: the within-sample means skip the diagonal."""
    n, m = len(x), len(y)
    total = 0.0
    kxx, kyy = _imq(x, x, base), _imq(y, y, base)
    total += (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    total += (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(total - 2 * _imq(x, y, base).mean())


@pytest.mark.parametrize("model", ["aae", "wae"])
def test_reported_code_mmd_is_recomputed_from_the_saved_fit(tmp_path, model):
    out = tmp_path / model
    assert main(["fit", model, *SMALL, "--latent-dim", "3", "--seed", "5",
                 "--out", str(out)]) == 0
    metrics = _strict_json(out / "metrics.json")
    fit = FitResult.load(out / "fit")
    x_test, _ = load_images("digits", split="test")
    with torch.no_grad():
        codes = fit.model.encoder(x_test).double().numpy()
    torch.manual_seed(5)  # the N(0, I_3) prior draws, one per test image, under --seed
    draws = torch.randn(len(x_test), 3).double().numpy()
    base = 2 * 3 * 1.0  # 2 L sigma^2 of N(0, I)
    assert (metrics["mmd_kernel"], metrics["mmd_kernel_scale"]) == ("imq", base)
    expected = _mmd_unbiased(codes, draws, base)
    assert metrics["test_mmd"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "gan", "--prior", "mog"], "--prior does not apply to fit gan"),
        (["fit", "infogan", "--prior", "normal"], "--prior does not apply to fit infogan"),
        (["fit", "aae", "--penalty", "gan"], "--penalty does not apply to fit aae"),
        (["fit", "dcgan", "--hidden", "8"], "--hidden does not apply to fit dcgan"),
        (["fit", "wae", "--d-steps", "2"], "--d-steps does not apply to fit wae --penalty mmd"),
        (["fit", "wae", "--loss", "minimax"], "--loss does not apply to fit wae"),
        (["fit", "dcgan"], "fit dcgan needs 28x28 images; --data digits has 8x8"),
        (["fit", "gan", "--components", "3"], "unrecognized arguments: --components"),
        (["fit", "gan", "--loss", "wasserstein"], "invalid choice"),
        (["fit", "aae", "--lr", "0"], "must be a positive number; got 0"),
    ],
)
def test_inapplicable_options_are_refused_in_one_line(tmp_path, capsys, argv, message):
    try:
        code = main([*argv, "--out", str(tmp_path / "o"), "--quiet"])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


RESUMABLE = ["fit", "aae", "--epochs", "4", "--batch-size", "300", "--hidden", "16",
             "--seed", "3", "--quiet"]


def _tensors(tree, where: str = "checkpoint") -> dict[str, torch.Tensor]:
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


def test_an_interrupted_run_resumed_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert main([*RESUMABLE, "--out", str(reference)]) == 0

    original = ppl_models.infer.fit_adversarial

    def interrupted_after_epoch_2(*args, **kwargs):
        def stop(epoch: int, history) -> None:
            if epoch >= 2:  # after the epoch's checkpoint is written, as Ctrl-C would
                raise KeyboardInterrupt

        return original(*args, **kwargs, callback=stop)

    out = tmp_path / "run"
    monkeypatch.setattr(ppl_models.infer, "fit_adversarial", interrupted_after_epoch_2)
    assert main([*RESUMABLE, "--out", str(out)]) == 130
    partial = tmp_path / ".run.partial" / "checkpoint" / "checkpoint.pt"
    assert load_checkpoint(partial)["epoch"] == 2 and not out.exists()
    monkeypatch.setattr(ppl_models.infer, "fit_adversarial", original)
    assert main([*RESUMABLE, "--resume", "--out", str(out)]) == 0

    expected, got = load_checkpoint(reference / "checkpoint"), load_checkpoint(
        out / "checkpoint")
    assert got["epoch"] == expected["epoch"] == 4
    a, b = _tensors(expected), _tensors(got)
    assert sorted(a) == sorted(b)
    for where, x in a.items():
        if x.is_floating_point():
            torch.testing.assert_close(b[where], x, rtol=0, atol=1e-6, msg=where)
        else:
            assert torch.equal(b[where], x), where
    fit_a, fit_b = FitResult.load(reference / "fit"), FitResult.load(out / "fit")
    for name, value in fit_a.model.state_dict().items():
        torch.testing.assert_close(fit_b.model.state_dict()[name], value, rtol=0, atol=1e-6)
    m_a, m_b = _strict_json(reference / "metrics.json"), _strict_json(out / "metrics.json")
    assert m_b["resumed"] is True and m_a["resumed"] is False
    for key in ("d_loss", "g_loss", "test_mmd"):
        assert m_b[key] == pytest.approx(m_a[key], rel=1e-6, abs=1e-6), key
