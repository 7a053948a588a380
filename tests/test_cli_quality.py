"""The sample-quality measures of the ``fit`` commands: recomputed from the saved model and
classifier, a classifier reused through ``--classifier``, and bad classifier files refused
before any fitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.special
import torch
from quality_checks import assert_sample_quality

from ppl_models.cli import main
from ppl_models.diagnostics.digit_classifier import (
    DigitClassifier,
    load_digit_classifier,
    save_digit_classifier,
)
from ppl_models.infer import FitResult

GAN = ["fit", "gan", "--epochs", "1", "--batch-size", "300", "--hidden", "16", "--quiet"]


def test_gan_measures_recomputed_from_the_saved_generator_and_classifier(tmp_path):
    out = tmp_path / "gan"
    assert main([*GAN, "--seed", "4", "--out", str(out)]) == 0
    figures = json.loads((out / "metrics.json").read_text())["sample_quality"]
    assert_sample_quality(figures, n_test=297)
    assert figures["classifier"]["path"] == "classifier.pt"
    assert figures["classifier"]["trained_by_this_run"] is True
    # the classifier trained on the digits' training split reaches 0.9 on their test split
    assert figures["classifier"]["test_accuracy"] >= 0.9
    classifier, _ = load_digit_classifier(out / "classifier.pt")
    model = FitResult.load(out / "fit").model.eval()
    torch.manual_seed(4)  # the generator's noise: 1000 draws of N(0, I) under --seed
    with torch.no_grad():
        images = torch.sigmoid(model.generator(torch.randn(1000, model.latent_dim)))
        probs = scipy.special.softmax(classifier(images).double().numpy(), axis=1)
    counts = np.bincount(probs.argmax(1), minlength=10)
    np.testing.assert_allclose(figures["class_shares"], counts / 1000, atol=1e-12)
    assert figures["confident_share"] == pytest.approx(np.mean(probs.max(1) >= 0.9), abs=1e-12)
    assert figures["classes_covered"] == int(np.sum(counts >= 10))


def test_a_classifier_is_read_from_classifier_path_and_written_there_if_absent(tmp_path):
    shared = tmp_path / "digits-classifier.pt"
    first, second = tmp_path / "a", tmp_path / "b"
    assert main([*GAN, "--classifier", str(shared), "--out", str(first)]) == 0
    assert shared.is_file() and not (first / "classifier.pt").exists()
    before = shared.read_bytes()
    assert main(["fit", "vae", "--epochs", "1", "--particles", "2", "--no-plots", "--quiet",
                 "--classifier", str(shared), "--out", str(second)]) == 0
    assert shared.read_bytes() == before
    a = json.loads((first / "metrics.json").read_text())["sample_quality"]["classifier"]
    b = json.loads((second / "metrics.json").read_text())["sample_quality"]["classifier"]
    assert a["trained_by_this_run"] is True and b["trained_by_this_run"] is False
    assert a["path"] == b["path"] == str(shared) and a["epochs"] == b["epochs"] == 20
    assert a["test_accuracy"] == b["test_accuracy"]


def test_a_corrupt_classifier_file_is_refused_before_fitting(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    try:
        code = main([*GAN, "--classifier", str(bad), "--out", str(tmp_path / "o")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "corrupt digit classifier" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_classifier_for_other_images_is_refused(tmp_path, capsys):
    path = save_digit_classifier(DigitClassifier(28), tmp_path / "mnist.pt")
    code = main([*GAN, "--classifier", str(path), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "was trained on 28x28 images" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_no_training_labels_no_measures(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "b.npz"
    np.savez(data, train=(rng.random((100, 784)) < 0.3).astype(np.uint8),
             valid=(rng.random((20, 784)) < 0.3).astype(np.uint8),
             test=(rng.random((20, 784)) < 0.3).astype(np.uint8))
    out = tmp_path / "o"
    assert main(["fit", "gan", "--epochs", "1", "--hidden", "8", "--data",
                 f"binarized-mnist:{data}", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["sample_quality"] is None
    assert "no training labels" in capsys.readouterr().err
    assert not (out / "classifier.pt").exists()
