"""The adversarial families against theory.

* Goodfellow et al. (2014), Proposition 1 and Theorem 1: with the generator held fixed, the
  discriminator trained by the adversarial step approaches D* = p_data / (p_data + p_g), and
  the value of the game approaches 2 JSD(p_data || p_g) - log 4. Both densities are known
  Gaussians; D* is written from scipy's densities and the JSD integrated by ``scipy.integrate``.
* The WAE's MMD estimator is unbiased: its mean over many draws equals the closed-form MMD^2
  of two Gaussians under a Gaussian kernel (and the biased V-statistic would be caught).
* The IMQ kernel of Tolstikhin et al. (2018) against a hand-written sum.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ppl_models.infer.adversarial import fit_adversarial
from ppl_models.models import GAN
from ppl_models.models.adversarial import (
    IMQ_SCALES,
    gaussian_kernel,
    imq_kernel,
    mmd_unbiased,
)

P_DATA = stats.norm(0.0, 1.0)
P_G = stats.norm(1.0, 1.5)  # the fixed affine generator x = 1.5 z + 1


def _jsd(p, q) -> float:
    """JSD(p || q) by adaptive quadrature of its two KL integrands (natural log)."""
    def integrand(t):
        a, b = p.pdf(t), q.pdf(t)
        m = 0.5 * (a + b)
        return 0.5 * a * np.log(a / m) + 0.5 * b * np.log(b / m)

    return integrate.quad(integrand, -20, 20, limit=200)[0]


@pytest.fixture(scope="module")
def fixed_generator_fit():
    torch.manual_seed(0)
    data = torch.randn(4000, 1, dtype=torch.float64)
    gan = GAN(1, 1, hidden=(), d_hidden=(32, 32)).double()
    with torch.no_grad():
        gan.generator.net[0].weight.fill_(1.5)
        gan.generator.net[0].bias.fill_(1.0)
    # lr=0 holds the generator fixed; the discriminator alone learns (d_lr).
    result = fit_adversarial(gan, data, batch_size=200, num_epochs=30, lr=0.0, d_lr=5e-3,
                             progress=False, seed=1)
    return gan, result


def test_discriminator_approaches_the_optimal_one(fixed_generator_fit):
    gan, _ = fixed_generator_fit
    assert gan.generator.net[0].weight.item() == 1.5  # held fixed
    assert gan.generator.net[0].bias.item() == 1.0
    grid = np.linspace(-2.5, 3.5, 601)  # where both densities hold their mass
    with torch.no_grad():
        trained = torch.sigmoid(gan.discriminate(torch.tensor(grid)[:, None])).numpy()
    optimal = P_DATA.pdf(grid) / (P_DATA.pdf(grid) + P_G.pdf(grid))
    sup_error = np.abs(trained - optimal).max()
    # measured: 0.035 (a constant D = 1/2 would be 0.40 off; D* spans 0.19 to 0.72 here)
    assert sup_error < 0.08, sup_error


def test_value_of_the_game_approaches_two_jsd_minus_log_four(fixed_generator_fit):
    gan, result = fixed_generator_fit
    v_star = 2 * _jsd(P_DATA, P_G) - np.log(4)
    # V(D, G) of the trained D by integration on a fine grid (D* maximises it: V <= V*)
    t = np.linspace(-12.0, 14.0, 20001)
    with torch.no_grad():
        logits = gan.discriminate(torch.tensor(t)[:, None]).numpy()
    log_d, log_not_d = -np.logaddexp(0, -logits), -np.logaddexp(0, logits)
    value = np.trapezoid(P_DATA.pdf(t) * log_d + P_G.pdf(t) * log_not_d, t)
    assert value <= v_star + 1e-6
    assert v_star - value < 0.01, (value, v_star)  # measured: 0.001
    # the history's per-step losses estimate the same value: -L_D = V on each batch
    late = -np.mean(result.history["d_loss"][-200:])
    assert abs(late - v_star) < 0.03, (late, v_star)  # measured: 0.004
    assert len(result.history["d_loss"]) == 30 * 20 == len(result.history["g_loss"])
    assert -v_star + np.log(4) > 0.1  # the two densities are far from equal: JSD matters


def _mmd_closed_form(mu1, cov1, mu2, cov2, h):
    """MMD^2 of N(mu1, cov1) and N(mu2, cov2) under exp(-|x-y|^2 / (2 h^2)).

    E k(x, y) with d = x - y ~ N(m, S): det(I + S / h^2)^(-1/2) exp(-m'(S + h^2 I)^(-1) m / 2).
    """
    def expected_kernel(m, s):
        eye = np.eye(len(m))
        return np.linalg.det(eye + s / h**2) ** -0.5 * np.exp(
            -0.5 * m @ np.linalg.solve(s + h**2 * eye, m))

    zero = np.zeros(len(mu1))
    return (expected_kernel(zero, 2 * cov1) + expected_kernel(zero, 2 * cov2)
            - 2 * expected_kernel(mu1 - mu2, cov1 + cov2))


def test_mmd_estimator_is_unbiased_against_the_closed_form():
    gen = torch.Generator().manual_seed(0)
    mu1, mu2 = np.array([0.0, 0.5]), np.array([0.8, -0.3])
    cov1 = np.array([[1.0, 0.3], [0.3, 0.5]])
    cov2 = np.array([[0.7, -0.2], [-0.2, 1.2]])
    h, n, m, reps = 1.3, 5, 7, 6000
    chol1 = torch.tensor(np.linalg.cholesky(cov1))
    chol2 = torch.tensor(np.linalg.cholesky(cov2))
    kernel = gaussian_kernel(h)
    estimates, biased = [], []
    for _ in range(reps):
        x = torch.tensor(mu1) + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ chol1.T
        y = torch.tensor(mu2) + torch.randn(m, 2, generator=gen, dtype=torch.float64) @ chol2.T
        estimates.append(float(mmd_unbiased(x, y, kernel)))
        biased.append(float(kernel(x, x).mean() + kernel(y, y).mean()
                            - 2 * kernel(x, y).mean()))
    truth = _mmd_closed_form(mu1, cov1, mu2, cov2, h)
    estimates = np.array(estimates)
    stderr = estimates.std(ddof=1) / np.sqrt(reps)
    assert abs(estimates.mean() - truth) < 4 * stderr, (estimates.mean(), truth, stderr)
    # the test can tell: the V-statistic (diagonal kept) is biased by many standard errors
    assert abs(np.mean(biased) - truth) > 10 * stderr
    assert truth > 0.05


def test_imq_kernel_sums_the_paper_scales():
    a = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    b = torch.tensor([[1.0, 1.0]])
    scale = 2 * 2 * 1.0  # 2 L sigma_z^2 with L = 2, sigma_z^2 = 1
    got = imq_kernel(scale)(a, b)
    d2 = np.array([[1.0], [1.0 + 4.0]])
    want = sum(c * scale / (c * scale + d2) for c in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert IMQ_SCALES == (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def test_mmd_refuses_a_single_draw():
    with pytest.raises(ValueError, match="at least 2 draws"):
        mmd_unbiased(torch.zeros(1, 2), torch.zeros(3, 2), gaussian_kernel(1.0))
