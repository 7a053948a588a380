"""ArviZ for amortized inference, against closed forms and quadrature.

* Linear-Gaussian VAE (probabilistic PCA) with orthogonal decoder columns: the exact posterior
  is a diagonal Gaussian, so an encoder can be set to it. Then every importance weight equals
  log p(x), the bound is the closed-form log N(x; b, W W^T + s^2 I) and the gap is 0.
* An encoder narrowed by a factor c has weights p/q with a Pareto tail of shape
  k = 1 - c^2 (the importance ratio of two Gaussians); a shifted one has gap -> KL(q || p) in
  closed form.
* GMVAE (label enumerated in p and q): the bound against log p(x) by quadrature over a 1-D code.
* Trained VAE on the bundled digits: k-hat passes the trained encoder and flags one frozen at
  initialisation; az.compare ranks it above a copy whose decoder is crippled.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from ppl_models._arviz import az
from ppl_models.diagnostics import (
    amortization_summary,
    amortized_diagnostics,
    amortized_loo,
    compare_amortized,
    plot_khat,
)
from ppl_models.images import load_images
from ppl_models.infer.evaluation import log_marginal_likelihood
from ppl_models.infer.svi import fit_svi
from ppl_models.models import GMVAE, VAE, GaussianMixture

D, L, S = 6, 2, 0.5
DOUBLE = torch.float64


def _linear_truth(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=DOUBLE))
    return q * torch.tensor([2.0, 1.5], dtype=DOUBLE), torch.randn(D, generator=g, dtype=DOUBLE)


def _linear_vae(w: torch.Tensor, b: torch.Tensor, *, shrink: float = 1.0,
                shift: float = 0.0) -> tuple[VAE, torch.Tensor]:
    """A linear-Gaussian VAE with decoder (w, b) and encoder the exact posterior, its scale
    multiplied by ``shrink`` and its mean moved by ``shift`` posterior sds; returns the model
    and the exact posterior sds."""
    model = VAE(D, L, likelihood="gaussian", hidden=(), obs_scale=S).to(DOUBLE)
    precision = 1 + (w * w).sum(0) / S**2  # W^T W is diagonal
    sd = precision.rsqrt()
    gain = (w.T / S**2) / precision[:, None]  # posterior mean = gain @ (x - b)
    with torch.no_grad():
        model.decoder.net[-1].weight.copy_(w)
        model.decoder.net[-1].bias.copy_(b)
        head = model.encoder.head
        head.weight.zero_()
        head.weight[:L] = gain
        head.bias[:L] = -gain @ b + shift * sd
        head.bias[L:] = torch.log(torch.expm1(shrink * sd - 1e-4))  # softplus^-1
    return model, sd


def _linear_data(w: torch.Tensor, b: torch.Tensor, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, L, generator=g, dtype=DOUBLE)
    return z @ w.T + b + S * torch.randn(n, D, generator=g, dtype=DOUBLE)


def _exact_log_evidence(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    cov = w @ w.T + S**2 * torch.eye(D, dtype=DOUBLE)
    return torch.distributions.MultivariateNormal(b, cov).log_prob(x).numpy()


def test_an_exact_posterior_encoder_has_equal_weights_zero_gap_and_the_exact_evidence():
    w, b = _linear_truth()
    model, _ = _linear_vae(w, b)
    x = _linear_data(w, b, 100)
    idata = amortized_diagnostics(model, x, num_particles=200)
    group = idata.amortized
    assert group["khat"].dims == ("obs",)
    np.testing.assert_allclose(group["iwae"].values, _exact_log_evidence(w, b, x), atol=1e-9)
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0, 0], group["iwae"].values)
    assert np.all(np.isneginf(group["khat"].values))  # no tail to fit
    assert np.all(group["ess"].values == 200)
    assert np.all(group["gap"].values >= 0)
    assert group["gap"].values.max() < 1e-9


@pytest.mark.parametrize("shrink", [0.8, 0.5])
def test_khat_of_a_narrowed_encoder_is_the_gaussian_tail_shape(shrink):
    # q = N(m, (c s)^2) against p = N(m, s^2): log(p/q) = a |z - m|^2 + const with
    # a = (1 - c^2) / (2 c^2 s^2), so P(p/q > t) ~ t^(-1/(1 - c^2)): k = 1 - c^2.
    w, b = _linear_truth()
    model, _ = _linear_vae(w, b, shrink=shrink)
    x = _linear_data(w, b, 150)
    khat = amortized_diagnostics(model, x, num_particles=2000).amortized["khat"].values
    assert np.isfinite(khat).all()
    assert khat.mean() == pytest.approx(1 - shrink**2, abs=0.06)


def test_a_wider_encoder_has_bounded_weights_and_negative_khat():
    w, b = _linear_truth()
    model, _ = _linear_vae(w, b, shrink=2.0)
    idata = amortized_diagnostics(model, _linear_data(w, b, 100), num_particles=1000)
    assert (idata.amortized["khat"].values < 0).all()
    summary = amortization_summary(idata)
    assert summary.loc["khat", "share_good"] == 1.0


def test_the_gap_of_a_shifted_encoder_is_its_kl_to_the_posterior():
    # q = N(m + d s, s^2) per coordinate: KL(q || p) = L d^2 / 2 in closed form; the
    # weights are log-normal with variance L d^2, so with K = 2000 the bound is within
    # ~1e-4 of log p(x), the gap estimates the KL and the effective sample size is known.
    w, b = _linear_truth()
    shift = 0.3
    model, _ = _linear_vae(w, b, shift=shift)
    x = _linear_data(w, b, 200)
    group = amortized_diagnostics(model, x, num_particles=2000).amortized
    kl = L * shift**2 / 2
    assert np.all(group["gap"].values >= 0)
    assert group["gap"].values.mean() == pytest.approx(kl, abs=0.005)
    # per observation: the ELBO's Monte Carlo sd is sqrt(L d^2 / K) ~ 0.0095
    assert np.abs(group["gap"].values - kl).max() < 0.05
    assert np.abs(group["iwae"].values - _exact_log_evidence(w, b, x)).max() < 0.05
    assert group.attrs["gap_mean"] == pytest.approx(group["gap"].values.mean())
    # log-normal weights of variance v: K / ESS -> E[w^2] / E[w]^2 = exp(v)
    assert group["ess"].values.mean() / 2000 == pytest.approx(math.exp(-L * shift**2),
                                                              abs=0.02)


def test_compare_ranks_by_the_exact_evidence_with_the_paired_standard_error():
    # Two linear-Gaussian models, each with its exact encoder: the pointwise values are the
    # closed-form log p(x_n), so elpd_diff and dse are known exactly.
    w, b = _linear_truth()
    x = _linear_data(w, b, 120)
    good, _ = _linear_vae(w, b)
    crippled, _ = _linear_vae(0.3 * w, b)
    fits = {"good": amortized_diagnostics(good, x, num_particles=50),
            "crippled": amortized_diagnostics(crippled, x, num_particles=50)}
    table = compare_amortized(fits)
    d = _exact_log_evidence(w, b, x) - _exact_log_evidence(0.3 * w, b, x)
    assert list(table.index) == ["good", "crippled"]
    assert table.loc["crippled", "elpd_diff"] == pytest.approx(d.sum(), rel=1e-9)
    assert table.loc["crippled", "dse"] == pytest.approx(math.sqrt(len(d) * d.var()), rel=1e-9)
    assert table.loc["good", "elpd_loo"] == pytest.approx(
        _exact_log_evidence(w, b, x).sum(), rel=1e-12)
    assert table.loc["good", "p_loo"] == 0.0
    exact = _exact_log_evidence(w, b, x)
    assert table.loc["good", "se"] == pytest.approx(math.sqrt(len(exact) * exact.var()),
                                                    rel=1e-9)
    assert not table["warning"].any()  # exact encoders: no unreliable pointwise value


def test_the_gmvae_bound_reaches_the_evidence_by_quadrature_over_the_code():
    # Label summed out of p and q (conditional encoder q(y|x) q(z|x,y)); a 1-D code lets
    # log p(x) = log int sum_y p(y) p(z|y) p(x|z) dz be computed on a grid.
    torch.manual_seed(3)
    model = GMVAE(3, 1, 3, likelihood="gaussian", hidden=(8,), obs_scale=0.7).to(DOUBLE)
    x = torch.randn(20, 3, dtype=DOUBLE)
    group = amortized_diagnostics(model, x, num_particles=10000, particle_batch=2500).amortized
    grid = torch.linspace(-15, 15, 30001, dtype=DOUBLE)[:, None]
    with torch.no_grad():
        log_prior = torch.logsumexp(model._log_joint_code_labels(grid), -1)  # (G,)
        log_lik = model.decode(grid[:, None, :]).log_prob(x)  # (G, N)
    step = float(grid[1, 0] - grid[0, 0])
    exact = (torch.logsumexp(log_lik + log_prior[:, None], 0) + math.log(step)).numpy()
    # Where the weights' tail is light the estimate's relative sd is about
    # sqrt(1/ESS - 1/K) (Kong 1992); k-hat > 0.5 marks where it is not to be trusted.
    reliable = group["khat"].values < 0.5
    assert reliable.sum() >= 10
    se = np.sqrt(1 / group["ess"].values - 1 / 10000)
    error = group["iwae"].values - exact
    assert np.all(np.abs(error[reliable]) < 4 * se[reliable] + 1e-3)


def test_the_bound_is_the_evaluation_modules_bound_with_the_same_draws():
    torch.manual_seed(0)
    model = GMVAE(4, 2, 3, likelihood="gaussian", hidden=(8,))
    x = torch.randn(30, 4)
    idata = amortized_diagnostics(model, x, num_particles=60, batch_size=7, particle_batch=25,
                                  seed=5)
    reference = log_marginal_likelihood(model, x, 60, batch_size=7, particle_batch=25, seed=5,
                                        pointwise=True)
    np.testing.assert_allclose(idata.amortized["iwae"].values, reference.double().numpy(),
                               rtol=1e-5)


@pytest.fixture(scope="module")
def digits_vae():
    x_train, _ = load_images("digits", split="train", binarize="threshold")
    x_test, _ = load_images("digits", split="test", binarize="threshold")
    torch.manual_seed(0)
    model = VAE(x_train.shape[1], 4, hidden=(64,))
    at_init = copy.deepcopy(model.encoder)
    result = fit_svi(model, x_train, batch_size=100, num_epochs=30, lr=3e-3, progress=False,
                     seed=0)
    return result, at_init, x_test[:150]


def test_khat_passes_a_trained_encoder_and_flags_one_frozen_at_initialisation(digits_vae):
    result, at_init, x = digits_vae
    frozen = copy.deepcopy(result.model)
    frozen.encoder = at_init  # the trained decoder, with the encoder it started from
    trained_k = amortized_diagnostics(result, x, num_particles=500).amortized["khat"].values
    frozen_k = amortized_diagnostics(frozen, x, num_particles=500).amortized["khat"].values
    assert np.median(trained_k) < 0.7 < np.median(frozen_k)
    assert (trained_k > 0.7).mean() < 0.3
    assert (frozen_k > 0.7).mean() > 0.5


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # arviz 0.23's compare, pandas 3
def test_az_compare_ranks_a_vae_above_a_copy_with_a_crippled_decoder(digits_vae):
    result, _, x = digits_vae
    model = result.model
    crippled = copy.deepcopy(model)
    with torch.no_grad():
        crippled.decoder.net[-1].weight.mul_(0.1)  # outputs barely depend on the code
    fits = {"crippled": amortized_diagnostics(crippled, x, num_particles=300),
            "vae": amortized_diagnostics(model, x, num_particles=300)}
    table = az.compare({name: amortized_loo(idata) for name, idata in fits.items()})
    assert list(table.index) == ["vae", "crippled"]
    assert table.loc["crippled", "elpd_diff"] > 3 * table.loc["crippled", "dse"]
    assert table.loc["vae", "weight"] > 0.9
    loo = amortized_loo(fits["vae"])
    assert loo["elpd_loo"] == pytest.approx(float(fits["vae"].amortized["iwae"].sum()))
    assert loo["pareto_k"].dims == ("obs",)


def test_plot_khat_draws_the_scatter_and_the_worst_images(digits_vae, tmp_path):
    result, _, x = digits_vae
    idata = amortized_diagnostics(result.model, x[:40], num_particles=100)
    fig = plot_khat(idata, x[:40], tmp_path / "khat.png", n_worst=9)
    assert (tmp_path / "khat.png").stat().st_size > 0
    khat = idata.amortized["khat"].values
    worst = np.argsort(khat)[::-1][:9]
    titles = [ax.get_title() for ax in fig.subfigs[1].axes]
    assert titles == [f"#{i}: {khat[i]:.2f}" for i in worst]
    scatter = fig.subfigs[0].axes[0]
    assert sum(len(c.get_offsets()) for c in scatter.collections) == 40
    with pytest.raises(ValueError, match="the 40 observations"):
        plot_khat(idata, x[:39])
    # a fit's own (training) data by default
    assert amortized_diagnostics(result, num_particles=25).amortized.sizes["obs"] == len(
        result.data)


def test_netcdf_round_trip(tmp_path):
    w, b = _linear_truth()
    model, _ = _linear_vae(w, b, shrink=0.8)
    idata = amortized_diagnostics(model, _linear_data(w, b, 20), num_particles=50)
    idata.to_netcdf(tmp_path / "amortized.nc")
    back = az.from_netcdf(tmp_path / "amortized.nc")
    np.testing.assert_array_equal(back.amortized["khat"].values, idata.amortized["khat"].values)
    assert back.amortized.attrs["num_particles"] == 50


def test_bad_input_is_refused_with_one_line():
    w, b = _linear_truth()
    model, _ = _linear_vae(w, b)
    x = _linear_data(w, b, 10)
    for k in (1, 20):  # with 20 the tail would hold 4 weights: no Pareto fit
        with pytest.raises(ValueError, match="num_particles must be an integer of at least 21"):
            amortized_diagnostics(model, x, num_particles=k)
    assert np.isfinite(amortized_diagnostics(_linear_vae(w, b, shrink=0.5)[0], x,
                                             num_particles=21).amortized["khat"]).all()
    with pytest.raises(ValueError, match="num_particles"):
        amortized_diagnostics(model, x, num_particles=True)
    with pytest.raises(ValueError, match="6"):
        amortized_diagnostics(model, x[:, :4], num_particles=30)
    with pytest.raises(ValueError, match="has no encoder"):
        amortized_diagnostics(GaussianMixture(2), x, num_particles=30)
    with pytest.raises(ValueError, match="data is required"):
        amortized_diagnostics(model, num_particles=30)
    with pytest.raises(ValueError, match="amortized_diagnostics"):
        amortized_loo(az.from_dict(posterior={"a": np.zeros((1, 5))}))
    with pytest.raises(ValueError, match="at least two fits"):
        compare_amortized({"one": amortized_diagnostics(model, x, num_particles=30)})
