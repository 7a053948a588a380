"""The VAE family against independent answers.

* A linear-Gaussian VAE is probabilistic PCA: log p(x) = log N(x; b, W W^T + s^2 I) in closed
  form, the ELBO and the importance-weighted bounds (Burda et al. 2016) lie below it and rise
  towards it with the number of particles, and the maximum-likelihood solution is known
  (Tipping & Bishop 1999): span(W) is the top-q principal subspace of the sample covariance,
  s^2 the mean of the other eigenvalues, and W W^T has eigenvalues lambda_i - s^2.
* The GMVAE's enumerated objective (TraceEnum_ELBO) equals the explicit sum over labels,
  written here with torch.distributions for the same draws of z.
* Pyro's plate scales a minibatch by N / B: checked against the hand-written sum.
"""

from __future__ import annotations

import copy
import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from scipy.linalg import subspace_angles
from torch.nn import functional as F

from ppl_models.images import load_images
from ppl_models.infer.evaluation import elbo_terms, log_marginal_likelihood
from ppl_models.infer.svi import fit_svi
from ppl_models.infer.trainer import ScaleSites as _ScaleSites
from ppl_models.models.mixture_vae import GMVAE, MixtureOfGaussiansPrior, VampPrior
from ppl_models.models.vae import VAE

D, Q = 6, 2


def _ppca_data(n: int, generator: torch.Generator) -> torch.Tensor:
    w = torch.randn(D, Q, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 0.5])
    return torch.randn(n, Q, generator=generator) @ w.T + 0.5 * torch.randn(n, D,
                                                                          generator=generator) + 1


def _decoder_affine(model: VAE) -> tuple[torch.Tensor, torch.Tensor, float]:
    layer = model.decoder.net[-1]
    return layer.weight.detach().double(), layer.bias.detach().double(), float(
        model.likelihood.scale.detach()) ** 2


def _exact_log_evidence(model: VAE, x: torch.Tensor) -> float:
    w, b, s2 = _decoder_affine(model)
    cov = w @ w.T + s2 * torch.eye(D, dtype=torch.float64)
    return float(torch.distributions.MultivariateNormal(b, cov).log_prob(x.double()).mean())


def _top_eigenvectors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    centred = (x - x.mean(0)).double()
    values, vectors = torch.linalg.eigh(centred.T @ centred / x.shape[0])  # ML covariance
    return values.flip(0), vectors.flip(1)


@pytest.fixture(scope="module")
def ppca():
    x = _ppca_data(600, torch.Generator().manual_seed(1))
    held_out = _ppca_data(3000, torch.Generator().manual_seed(2))
    torch.manual_seed(1)
    model = VAE(D, Q, likelihood="gaussian", hidden=())  # affine encoder and decoder
    w_init = _decoder_affine(model)[0].clone()
    result = fit_svi(model, x, batch_size=100, num_epochs=100, lr=0.1, progress=False)
    return x, held_out, w_init, result


def test_linear_vae_reaches_the_ppca_maximum_likelihood_solution(ppca):
    x, _, w_init, result = ppca
    values, vectors = _top_eigenvectors(x)
    top = vectors[:, :Q].numpy()
    before = subspace_angles(w_init.numpy(), top)
    w, b, s2 = _decoder_affine(result.model)
    after = subspace_angles(w.numpy(), top)
    assert before.max() > 0.3  # a random start is far from the principal subspace
    assert after.max() < 0.03  # radians
    s2_ml = float(values[Q:].mean())
    assert s2 == pytest.approx(s2_ml, rel=0.05)
    eig_wwt = torch.linalg.eigvalsh(w @ w.T).flip(0)[:Q]
    assert torch.allclose(eig_wwt, values[:Q] - s2_ml, rtol=0.08)
    assert torch.allclose(b, x.mean(0).double(), atol=0.05)


class _Widened(torch.nn.Module):
    """A deliberately worse q(z|x): the trained encoder's mean shifted, its scale widened."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.inner = encoder

    def forward(self, x, context=None):
        loc, scale = self.inner(x)
        return loc + 0.3, 1.5 * scale


def test_elbo_and_iwae_bounds_lie_below_the_exact_evidence_and_rise_towards_it(ppca):
    _, held_out, _, result = ppca
    exact = _exact_log_evidence(result.model, held_out)
    # At the optimum the diagonal q is nearly the exact posterior: a tight bound.
    assert exact - 0.05 < elbo_terms(result, held_out)["elbo"] <= exact + 0.01
    # Any q gives bounds below log p(x), rising to it with the particles (Burda et al.).
    model = copy.deepcopy(result.model)
    model.encoder = _Widened(model.encoder)
    elbo = elbo_terms(model, held_out)["elbo"]
    bounds = [log_marginal_likelihood(model, held_out, k, particle_batch=250)
              for k in (1, 10, 100, 1000)]
    assert elbo < exact - 1.0
    # L_1 is an ELBO estimate too (the KL by Monte Carlo): s.e. of the difference ~0.07.
    assert bounds[0] == pytest.approx(elbo, abs=0.25)
    # Expected bounds rise with K (a theorem); estimates from K >= 10 vary by < 0.01.
    assert all(later >= earlier - 0.02 for earlier, later in itertools.pairwise(bounds))
    assert max(bounds) <= exact + 0.01
    assert bounds[-1] > bounds[0] + 1.0
    assert exact - bounds[-1] < 0.05 * (exact - bounds[0])


# ----------------------------------------------------------------------------- GMVAE
@pytest.mark.parametrize("conditional", [True, False])
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_gmvae_enumerated_objective_equals_the_explicit_sum_over_labels(conditional, beta):
    n, b, d, latent, k = 50, 8, 12, 3, 4
    x = (torch.rand(n, d, generator=torch.Generator().manual_seed(3)) < 0.4).double()
    rows = torch.arange(10, 10 + b)
    xb = x[rows]
    model = GMVAE(d, latent, k, conditional_encoder=conditional, hidden=(16,)).double()
    with torch.no_grad():
        model.prior.locs.mul_(2.0)
        model.prior.log_scales.sub_(0.3)
    # beta weights the latent sites of model and guide (the driver's KL warm-up).
    scaled = _ScaleSites(("y", "z"), beta)
    pyro.set_rng_seed(5)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(
        scaled(model.model), scaled(model.guide), xb, n_obs=n, subsample=rows
    )
    pyro.set_rng_seed(5)  # the same draws of z, from the guide run under enumeration
    trace = poutine.trace(poutine.enum(model.guide, first_available_dim=-2)).get_trace(
        xb, n_obs=n, subsample=rows)
    z = trace.nodes["z"]["value"]
    normal = torch.distributions.Normal
    locs, scales = model.prior.locs.detach(), model.prior.log_scales.detach().exp()
    with torch.no_grad():
        log_px = torch.distributions.Bernoulli(logits=model.decoder(z)).log_prob(xb).sum(-1)
        if conditional:  # sum_y q(y|x) [log p(x|z_y) + b (log p(z_y|y) - log q(z_y|x,y)
            #                                   + log p(y) - log q(y|x))]
            log_qy = torch.log_softmax(model.classifier(xb), -1).T  # (K, B)
            onehot = F.one_hot(torch.arange(k), k)[:, None, :].double()
            loc, scale = model.encoder(xb, onehot)
            log_qz = normal(loc, scale).log_prob(z).sum(-1)
            log_pz = normal(locs[:, None], scales[:, None]).log_prob(z).sum(-1)
            per_point = (log_qy.exp() * (
                log_px + beta * (log_pz - log_qz + math.log(1 / k) - log_qy))).sum(0)
        else:  # log p(x|z) + b (log sum_y p(y) p(z|y) - log q(z|x))
            loc, scale = model.encoder(xb)
            log_qz = normal(loc, scale).log_prob(z).sum(-1)
            log_pz = torch.logsumexp(
                normal(locs, scales).log_prob(z[:, None]).sum(-1) + math.log(1 / k), -1)
            per_point = log_px + beta * (log_pz - log_qz)
    assert loss == pytest.approx(-(n / b) * float(per_point.sum()), rel=1e-10)
    # The model's own objective (fit_svi's fast path) is the same estimator, same draws.
    pyro.set_rng_seed(5)
    with torch.no_grad():
        terms = model.elbo_terms(xb)
    objective = terms["reconstruction"] - beta * (terms["kl_z"] + terms["kl_y"])
    assert float(objective.sum()) == pytest.approx(float(per_point.sum()), rel=1e-10)
    assert bool((terms["kl_y"] >= -1e-12).all())  # a KL divergence between categoricals


def test_gmvae_label_posterior_is_bayes_rule_given_the_code():
    model = GMVAE(10, 2, 3, conditional_encoder=False, hidden=(8,)).double()
    x = (torch.rand(5, 10, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    with torch.no_grad():
        loc, _ = model.encoder(x)
        locs, scales = model.prior.locs, model.prior.log_scales.exp()
        joint = torch.distributions.Normal(locs, scales).log_prob(loc[:, None]).sum(-1)
        expected = joint - torch.logsumexp(joint, -1, keepdim=True)  # uniform p(y) cancels
        assert torch.allclose(model.label_posterior_logits(x), expected)


# ----------------------------------------------------------------------------- plate scaling
def test_minibatch_plate_scales_the_batch_by_n_over_b():
    n, b, d = 40, 5, 7
    x = (torch.rand(n, d, generator=torch.Generator().manual_seed(4)) < 0.3).double()
    rows = torch.tensor([3, 17, 18, 25, 39])
    model = VAE(d, 2, hidden=(6,)).double()
    pyro.set_rng_seed(9)
    loss = Trace_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x[rows], n_obs=n,
                                                subsample=rows)
    pyro.set_rng_seed(9)
    z = poutine.trace(model.guide).get_trace(x[rows], n_obs=n, subsample=rows).nodes["z"]["value"]
    with torch.no_grad():
        loc, scale = model.encoder(x[rows])
        normal = torch.distributions.Normal
        per_point = (
            torch.distributions.Bernoulli(logits=model.decoder(z)).log_prob(x[rows]).sum(-1)
            + normal(0.0, 1.0).log_prob(z).sum(-1)
            - normal(loc, scale).log_prob(z).sum(-1)
        )
    assert loss == pytest.approx(-(n / b) * float(per_point.sum()), rel=1e-10)


def test_model_objective_is_pyros_trace_elbo_for_the_same_draws():
    n, d = 30, 9
    x = (torch.rand(n, d, generator=torch.Generator().manual_seed(5)) < 0.5).double()
    model = VAE(d, 3, prior=MixtureOfGaussiansPrior(4), hidden=(8,)).double()
    rows = torch.arange(6)
    pyro.set_rng_seed(2)
    loss = Trace_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x[rows], n_obs=n,
                                                subsample=rows)
    pyro.set_rng_seed(2)
    with torch.no_grad():  # no closed-form KL for a mixture: the same z, a Monte-Carlo KL
        terms = model.elbo_terms(x[rows])
    elbo = terms["reconstruction"] - terms["kl"]
    assert loss == pytest.approx(-(n / 6) * float(elbo.sum()), rel=1e-10)


def test_standard_prior_kl_is_the_closed_form():
    model = VAE(8, 3, hidden=(5,)).double()
    x = (torch.rand(4, 8, generator=torch.Generator().manual_seed(6)) < 0.5).double()
    with torch.no_grad():
        loc, scale = model.encoder(x)
        expected = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)  # KL(N(m,s^2)||N(0,1))
        assert torch.allclose(model.elbo_terms(x)["kl"], expected)


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def digits():
    return load_images("digits", binarize="threshold")[0]


VARIANTS = {
    "standard": lambda: VAE(64, 4, hidden=(64,)),
    "mog": lambda: VAE(64, 4, prior="mog", hidden=(64,)),
    "vamp": lambda: VAE(64, 4, prior=VampPrior(20), hidden=(64,)),
    "user_prior": lambda: VAE(64, 4, prior=dist.Normal(torch.zeros(4), 2.0).to_event(1),
                              hidden=(64,)),
    "gmvae": lambda: GMVAE(64, 4, 10, hidden=(64,)),
    "gmvae_q(z|x)": lambda: GMVAE(64, 4, 10, conditional_encoder=False, hidden=(64,)),
}


@pytest.mark.parametrize("objective", ["auto", "pyro"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_trains_on_digits(variant, objective, digits):
    torch.manual_seed(0)
    model = VARIANTS[variant]()
    result = fit_svi(model, digits, batch_size=100, num_epochs=4, lr=3e-3, objective=objective,
                     progress=False)
    elbo = result.history["elbo"]
    assert len(elbo) == 4 and all(map(math.isfinite, elbo))
    assert elbo[-1] > elbo[0] + 1.0  # nats per image: the loss goes down
    assert set(result.history) == {"elbo", "beta", *model.term_names}
    terms = {name: result.history[name][-1] for name in model.term_names}
    # The last epoch's mean objective and the evaluation batch's ELBO agree roughly.
    assert terms["reconstruction"] - sum(terms[t] for t in model.term_names[1:]) == \
        pytest.approx(elbo[-1], abs=3.0)
    expected = "pyro" if objective == "pyro" else f"{type(model).__name__}.elbo_terms"
    assert result.info["objective"] == expected
    assert result.params == {} and result.draws is None and result.guide == model.guide


def test_continuous_bernoulli_takes_intensities():
    x, _ = load_images("digits")  # grey levels in [0, 1]
    model = VAE(64, 4, likelihood="continuous_bernoulli", hidden=(32,))
    with pytest.raises(ValueError, match="binary pixels"):
        VAE(64, 4).validate(x)
    result = fit_svi(model, x, batch_size=250, num_epochs=3, lr=3e-3, progress=False)
    assert result.history["elbo"][-1] > result.history["elbo"][0]
    assert log_marginal_likelihood(result, x[:50], 20) >= elbo_terms(result, x[:50])["elbo"] - 1


def _blobs(n: int) -> torch.Tensor:
    """Binary 28x28 images of a square at a random place (a tiny MNIST-shaped data set)."""
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(n, 28, 28)
    for i, (r, c) in enumerate(torch.randint(0, 20, (n, 2), generator=g).tolist()):
        images[i, r : r + 8, c : c + 8] = 1
    return images.reshape(n, 784)


@pytest.mark.parametrize("model_fn", [
    lambda: VAE(784, 3, architecture="conv", hidden=(32,)),
    lambda: GMVAE(784, 3, 4, architecture="conv", hidden=(32,)),
], ids=["vae", "gmvae"])
def test_conv_networks_on_28x28_images(model_fn):
    x = _blobs(48)
    model = model_fn()
    result = fit_svi(model, x, batch_size=16, num_epochs=2, lr=3e-3, progress=False)
    assert all(map(math.isfinite, result.history["elbo"]))
    with torch.no_grad():
        assert model.log_importance_weights(x[:5], 7).shape == (7, 5)
        sample = model.model(None, n_obs=3)
    assert sample.shape == (3, 784) and set(sample.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: VAE(64, 0), "latent_dim must be a positive integer"),
        (lambda: VAE(64, 2.5), "latent_dim must be a positive integer"),
        (lambda: VAE(64, 4, likelihood="poisson"), "unknown likelihood 'poisson'"),
        (lambda: VAE(64, 4, prior="flow"), "unknown prior 'flow'"),
        (lambda: VAE(64, 4, architecture="conv"), "1x28x28 images"),
        (lambda: VAE(64, 4, architecture="resnet"), "unknown architecture 'resnet'"),
        (lambda: VAE(64, 4, hidden=(64, 0)), r"hidden\[1\] must be a positive integer; got 0"),
        (lambda: VAE(64, 4, hidden=(True,)), r"hidden\[0\] must be a positive integer; got True"),
        (lambda: VAE(64, 4, activation="gelu"), "unknown activation 'gelu'"),
        (lambda: VAE(64, 4, prior=dist.Normal(0.0, 1.0)), r"event shape \(4,\)"),
        (lambda: VAE(64, 4, prior=dist.Gamma(torch.ones(4), 1.0).to_event(1)), "real support"),
        (lambda: VAE(64, 4, obs_scale=1.0), "takes no obs_scale"),
        (lambda: VAE(64, 4, likelihood="gaussian", obs_scale=-1.0),
         "obs_scale must be a positive number; got -1.0"),
        (lambda: GMVAE(64, 4, 0), "n_clusters must be a positive integer"),
        (lambda: VAE(64, 4, prior=VampPrior(0)), "n_pseudo must be a positive integer"),
    ],
)
def test_bad_model_arguments_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_data_is_refused(digits):
    grey, _ = load_images("digits")
    with pytest.raises(ValueError, match=r"binary pixels.*binarize.*continuous_bernoulli"):
        fit_svi(VAE(64, 2), grey, batch_size=100, num_epochs=1)
    with pytest.raises(ValueError, match=r"takes 64 features.*data have 784"):
        VAE(64, 2).validate(_blobs(3))
    with pytest.raises(ValueError, match=r"intensities in \[0, 1\]"):
        VAE(64, 2, likelihood="continuous_bernoulli").validate(grey * 2)
    with pytest.raises(ValueError, match="subsample needs n_obs"):
        VAE(64, 2).model(digits[:3], subsample=torch.arange(3))


class _TableWeights:
    """Log weights read from a fixed table: row n of the data gets w[:, n], in order."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.used = torch.zeros(table.shape[1], dtype=torch.long)

    def log_importance_weights(self, x, num_particles):
        rows = x[:, 0].long()
        start = int(self.used[rows[0]])
        self.used[rows] += num_particles
        return self.table[start : start + num_particles, rows]


@pytest.mark.parametrize(("batch_size", "particle_batch"), [(7, 3), (30, 64), (1, 1000)])
def test_iwae_accumulates_batches_of_data_and_particles_exactly(batch_size, particle_batch):
    k, n = 64, 30
    table = 5 * torch.randn(k, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.arange(n, dtype=torch.float64)[:, None]
    expected = float((torch.logsumexp(table, 0) - math.log(k)).mean())
    fake = _TableWeights(table)
    value = log_marginal_likelihood(fake, x, k, batch_size=batch_size,
                                    particle_batch=particle_batch)
    assert value == pytest.approx(expected, rel=1e-12)
    assert torch.equal(fake.used, torch.full((n,), k))
    pointwise = log_marginal_likelihood(_TableWeights(table), x, k, batch_size=batch_size,
                                        particle_batch=particle_batch, pointwise=True)
    torch.testing.assert_close(pointwise, torch.logsumexp(table, 0) - math.log(k))


def test_evaluation_refuses_models_without_an_amortized_posterior():
    from ppl_models.models import GaussianMixture

    with pytest.raises(ValueError, match="no log_importance_weights"):
        log_marginal_likelihood(GaussianMixture(2), torch.randn(5, 2), 3)
    with pytest.raises(ValueError, match="num_particles must be a positive integer"):
        log_marginal_likelihood(VAE(4, 2), torch.ones(3, 4), 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diagonal_normal_mixture_density_equals_the_explicit_sum_over_components(dtype):
    from ppl_models.models.mixture_vae import DiagonalNormalMixture

    g = torch.Generator().manual_seed(3)
    k, dim = 40, 6
    locs = (3 * torch.randn(k, dim, generator=g)).to(dtype)
    scales = (0.02 + torch.rand(k, dim, generator=g)).to(dtype)
    logits = torch.randn(k, generator=g).to(dtype)
    z = (2 * torch.randn(7, 5, dim, generator=g)).to(dtype)
    mixture = DiagonalNormalMixture(logits, locs, scales)
    d = z.double()[..., None, :]
    log_components = (
        -0.5 * ((d - locs.double()) / scales.double()).pow(2)
        - scales.double().log() - 0.5 * math.log(2 * math.pi)
    ).sum(-1)
    expected = torch.logsumexp(log_components + torch.log_softmax(logits.double(), -1), -1)
    got = mixture.log_prob(z)
    assert got.shape == (7, 5) and got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=1e-6 if dtype == torch.float32
                               else 1e-12, atol=0)
    assert mixture.sample((3,)).shape == (3, dim)


class _FirstPixels(torch.nn.Module):
    """An encoder whose code is the first ``dim`` inputs (so the codes are known)."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x, context=None):
        return x[..., : self.dim], torch.ones_like(x[..., : self.dim])


def test_mixture_prior_starts_from_em_on_the_codes_as_scikit_learn_fits_them():
    from sklearn.mixture import GaussianMixture as SkMixture

    from ppl_models.infer.cluster_init import init_prior_from_codes

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]])
    codes = (centres[torch.arange(300) % 3] + torch.randn(300, 2, generator=g)
             * torch.tensor([0.5, 1.0]))
    x = torch.cat([codes, torch.randn(300, 3, generator=g)], 1)
    model = VAE(5, 2, likelihood="gaussian", prior=MixtureOfGaussiansPrior(3), hidden=())
    model.encoder = _FirstPixels(2)
    fit = init_prior_from_codes(model, x, n_init=3)
    sk = SkMixture(3, covariance_type="diag", n_init=3, random_state=0).fit(codes.double().numpy())
    order, sk_order = model.prior.locs[:, 0].argsort(), sk.means_[:, 0].argsort()
    locs = model.prior.locs.detach()[order].double()
    torch.testing.assert_close(locs, torch.as_tensor(sk.means_[sk_order]), atol=1e-4, rtol=0)
    scales = model.prior.log_scales.detach()[order].exp().double()
    torch.testing.assert_close(scales, torch.as_tensor(sk.covariances_[sk_order]).sqrt(),
                               atol=1e-4, rtol=0)
    weights = model.prior.log_weights().detach()[order].exp().double()
    torch.testing.assert_close(weights, torch.as_tensor(sk.weights_[sk_order]), atol=1e-4,
                               rtol=0)
    assert fit.params["locs"].shape == (3, 2)


def test_prior_from_codes_refuses_what_it_cannot_start():
    from ppl_models.infer.cluster_init import init_prior_from_codes

    x = torch.bernoulli(torch.full((20, 8), 0.5))
    with pytest.raises(ValueError, match="needs a mixture-of-Gaussians prior; VAE has "
                       "StandardNormalPrior"):
        init_prior_from_codes(VAE(8, 2), x)
    with pytest.raises(ValueError, match="conditional_encoder=False"):
        init_prior_from_codes(GMVAE(8, 2, 3), x)
    with pytest.raises(ValueError, match="5 images cannot start 10 components"):
        init_prior_from_codes(GMVAE(8, 2, 10, conditional_encoder=False), x[:5])
