"""The digit classifier and the sample-quality measures, against independent references: the
closed-form Fréchet distance between Gaussians (diagonal case by hand, general case through
scipy's ``sqrtm``), hand-computed class histograms, scipy's entropy and softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
import torch

from ppl_models.diagnostics.digit_classifier import (
    classifier_accuracy,
    load_digit_classifier,
    save_digit_classifier,
    train_digit_classifier,
)
from ppl_models.diagnostics.sample_quality import (
    SampleQuality,
    class_shares,
    classes_covered,
    frechet_distance,
    gaussian_frechet_distance,
    kl_from_uniform,
    sample_quality,
)
from ppl_models.images import load_images


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _scipy_frechet(m1, s1, m2, s2) -> float:
    """The closed form with scipy's general matrix square root of the product S1 S2."""
    cross = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * cross.real))


# ------------------------------------------------------------------ Fréchet distance
def test_frechet_of_diagonal_gaussians_is_the_hand_formula():
    # commuting covariances: d^2 = |m1 - m2|^2 + sum_i (sqrt(v1_i) - sqrt(v2_i))^2
    m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = gaussian_frechet_distance(m1, np.diag(v1), m2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(1 + 6.25 + 4 + 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_of_general_gaussians_matches_scipy_sqrtm(seed):
    rng = np.random.default_rng(seed)
    d = 6
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    expected = _scipy_frechet(m1, s1, m2, s2)
    assert gaussian_frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-8)
    # a symmetric distance
    assert gaussian_frechet_distance(m2, s2, m1, s1) == pytest.approx(expected, rel=1e-8)


def test_frechet_of_large_samples_approaches_the_closed_form():
    rng = np.random.default_rng(3)
    d, n = 4, 200_000
    m1, m2 = np.zeros(d), np.array([0.5, -0.5, 1.0, 0.0])
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    a = rng.multivariate_normal(m1, s1, size=n)
    b = rng.multivariate_normal(m2, s2, size=n)
    expected = _scipy_frechet(m1, s1, m2, s2)
    # sampling error of the plug-in estimate is O(1/sqrt(n)), about 1% here
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_frechet_of_identical_sets_is_zero_and_of_a_shift_the_squared_shift():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.arange(8) / 4
    assert frechet_distance(a, a + shift) == pytest.approx(np.sum(shift ** 2), rel=1e-8)


def test_frechet_refuses_mismatched_features():
    with pytest.raises(ValueError, match="same number of columns"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


# ------------------------------------------------------------------ class histograms
def test_class_histogram_measures_against_hand_computed_values():
    predicted = [0, 0, 1, 2, 2, 2]
    shares = class_shares(predicted, 10)
    np.testing.assert_allclose(shares, [2 / 6, 1 / 6, 3 / 6] + [0] * 7)
    assert classes_covered(shares) == 3
    # sum p log(10 p) = log 10 - H(p), by hand and by scipy
    by_hand = (2 / 6) * math.log(20 / 6) + (1 / 6) * math.log(10 / 6) + 0.5 * math.log(5)
    assert kl_from_uniform(shares) == pytest.approx(by_hand, rel=1e-12)
    assert kl_from_uniform(shares) == pytest.approx(
        scipy.stats.entropy(shares, np.full(10, 0.1)), rel=1e-12)


def test_coverage_threshold_and_extreme_histograms():
    shares = np.array([0.5, 0.495, 0.005] + [0] * 7)
    assert classes_covered(shares, 0.01) == 2  # 0.5% is below the 1% share
    assert classes_covered(shares, 0.005) == 3  # "at least" the share counts
    assert kl_from_uniform(np.full(10, 0.1)) == pytest.approx(0.0, abs=1e-15)
    assert kl_from_uniform(np.eye(10)[3]) == pytest.approx(math.log(10))
    with pytest.raises(ValueError, match="summing to 1"):
        kl_from_uniform([0.5, 0.2])


# ------------------------------------------------------------------ the classifier
@pytest.fixture(scope="module")
def digits():
    x, y = load_images("digits", split="train")
    xt, yt = load_images("digits", split="test")
    return x, y, xt, yt


@pytest.fixture(scope="module")
def classifier(digits):
    x, y, _, _ = digits
    return train_digit_classifier(x, y, epochs=20, seed=0)


def test_classifier_on_bundled_digits_reaches_090_on_held_out_images(classifier, digits):
    _, _, xt, yt = digits
    assert classifier_accuracy(classifier, xt, yt) >= 0.9


def test_training_is_seeded_and_leaves_the_global_rng_alone(digits):
    x, y, xt, _ = digits
    torch.manual_seed(11)
    expected_next = torch.rand(3)
    torch.manual_seed(11)
    a = train_digit_classifier(x[:200], y[:200], epochs=1, seed=5)
    assert torch.equal(torch.rand(3), expected_next)
    b = train_digit_classifier(x[:200], y[:200], epochs=1, seed=5)
    with torch.no_grad():
        assert torch.equal(a(xt), b(xt))


def test_saved_classifier_loads_with_the_same_outputs(classifier, digits, tmp_path):
    _, _, xt, _ = digits
    path = save_digit_classifier(classifier, tmp_path / "c.pt", info={"test_accuracy": 0.5})
    loaded, info = load_digit_classifier(path)
    assert info == {"test_accuracy": 0.5}
    with torch.no_grad():
        torch.testing.assert_close(loaded(xt), classifier(xt), rtol=0, atol=0)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_corrupt_classifier_file_is_a_value_error(classifier, tmp_path, damage):
    path = save_digit_classifier(classifier, tmp_path / "c.pt")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file at all")
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="corrupt digit classifier"):
        load_digit_classifier(path)


def test_classifier_refuses_images_of_another_size(classifier):
    with pytest.raises(ValueError, match="trained on 8x8 images; got images of 784 pixels"):
        classifier(torch.zeros(2, 784))


# ------------------------------------------------------------------ all measures together
def test_sample_quality_against_an_independent_reading(classifier, digits):
    _, _, xt, _ = digits
    generated = xt[:150]
    quality = sample_quality(classifier, generated, xt[150:], threshold=0.9)
    with torch.no_grad():
        logits = classifier(generated).double().numpy()
    probs = scipy.special.softmax(logits, axis=1)
    counts = np.bincount(probs.argmax(1), minlength=10)
    shares = counts / counts.sum()
    assert quality.confident_share == pytest.approx(np.mean(probs.max(1) >= 0.9), abs=1e-12)
    assert quality.classes_covered == int(np.sum(counts >= 0.01 * 150))
    assert quality.kl_from_uniform == pytest.approx(
        scipy.stats.entropy(shares, np.full(10, 0.1)), rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(quality.class_shares, shares, atol=1e-12)
    assert (quality.n_generated, quality.n_reference) == (150, 147)
    with torch.no_grad():
        feats_a = classifier.features(generated).double().numpy()
        feats_b = classifier.features(xt[150:]).double().numpy()
    # ReLU features can be constant (singular covariances, where sqrtm is inaccurate): the
    # trace of (S_a S_b)^{1/2} as the sum of square roots of the general eigenvalues of S_a S_b
    s_a, s_b = np.cov(feats_a.T), np.cov(feats_b.T)
    cross = np.sqrt(np.clip(np.linalg.eigvals(s_a @ s_b).real, 0, None)).sum()
    expected = (np.sum((feats_a.mean(0) - feats_b.mean(0)) ** 2)
                + np.trace(s_a) + np.trace(s_b) - 2 * cross)
    assert quality.frechet_distance == pytest.approx(expected, rel=1e-5)
    d = quality.to_dict()
    assert isinstance(quality, SampleQuality) and isinstance(d["class_shares"], list)
    assert set(d) == {"confident_share", "classes_covered", "kl_from_uniform",
                      "frechet_distance", "class_shares", "n_generated", "n_reference",
                      "threshold", "min_share"}


def test_images_of_three_classes_cover_three(classifier, digits):
    x, y, xt, _ = digits
    three = x[(y == 0) | (y == 4) | (y == 7)]
    quality = sample_quality(classifier, three, xt, min_share=0.1)
    assert quality.classes_covered == 3
    # about a third each: KL near log(10 / 3)
    assert quality.kl_from_uniform == pytest.approx(math.log(10 / 3), abs=0.1)


def test_real_images_score_better_than_noise(classifier, digits):
    x, _, xt, _ = digits
    noise = torch.rand(300, 64, generator=torch.Generator().manual_seed(0))
    real = sample_quality(classifier, x[:300], xt)
    fake = sample_quality(classifier, noise, xt)
    assert real.frechet_distance == pytest.approx(frechet_distance(
        classifier.features(x[:300]).detach().double().numpy(),
        classifier.features(xt).detach().double().numpy()), rel=1e-9)
    assert real.frechet_distance < fake.frechet_distance / 5
    assert real.classes_covered == 10 and real.confident_share > fake.confident_share
    identical = sample_quality(classifier, xt, xt)
    assert identical.frechet_distance == pytest.approx(0.0, abs=1e-6)
