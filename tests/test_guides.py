"""The guides package against independent answers, and each kind's errors.

References: the conjugate Normal posterior (Gelman et al., BDA3, §2.5), the PPCA posterior of the
latent given the loadings (Tipping & Bishop, 1999), and the mixture density summed over labels by
scipy. The (model, kind) contract over the whole collection is in ``test_guide_contract.py``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from scipy import stats
from test_guide_contract import PPCA, ppca_data

import guides
from ppl_models.data import load
from ppl_models.infer import fit_mcmc, fit_svi
from ppl_models.models import GaussianMixture

SIGMA, M0, S0 = 1.5, 0.5, 2.0


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on these tiny tensors torch's thread pool costs far more than it
    gives (``tril`` of a 2x2 with its backward: ~1 ms with 2 threads, ~16 us with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def conjugate():
    """One spherical component with known scale and a Normal prior on its location: the
    posterior of each coordinate is Normal with precision 1/s0^2 + N/sigma^2 and mean
    (m0/s0^2 + sum_n x_nd/sigma^2) / precision, independently across coordinates."""
    gen = torch.Generator().manual_seed(1)
    x = 1.0 + SIGMA * torch.randn(25, 2, generator=gen)
    model = GaussianMixture(
        1, "spherical", priors={"scale": torch.tensor([SIGMA]), "locs": dist.Normal(M0, S0)}
    )
    precision = 1 / S0**2 + x.shape[0] / SIGMA**2
    mean = (M0 / S0**2 + x.sum(0) / SIGMA**2) / precision
    return model, x, mean, torch.full_like(mean, precision**-0.5)


@pytest.fixture(scope="module")
def faithful():
    x, _ = load("faithful")
    return x[::4]


# ---------------------------------------------------------------------- correctness
@pytest.mark.parametrize(("kind", "options"), [("full_rank", {}), ("low_rank", {"rank": 1})])
def test_gaussian_guides_recover_the_conjugate_posterior(conjugate, kind, options):
    model, x, mean, sd = conjugate
    result = fit_svi(
        model, x, guide=kind, guide_options=options, num_steps=1500, lr=0.05, lr_decay=0.004,
        init="prior", num_draws=4000, progress=False,
    )
    draws = result.draws["locs"].reshape(-1, 2)
    # 4000 draws: Monte-Carlo error of the mean ~0.016 sd, of the sd ~1.1%; the final
    # iterate's own jitter stays within ~0.05 sd (seeds 0-2).
    assert torch.allclose(draws.mean(0), mean, atol=float(0.1 * sd[0]))
    assert torch.allclose(draws.std(0), sd, rtol=0.1)
    # The exact posterior is independent across coordinates.
    assert abs(float(torch.corrcoef(draws.T)[0, 1])) < 0.1


def test_laplace_is_exact_on_the_conjugate_posterior(conjugate):
    # The log posterior of a real site is quadratic: its Laplace approximation is the
    # posterior itself, with no Monte-Carlo error (MAP trained by a deterministic gradient).
    model, x, mean, sd = conjugate
    result = fit_svi(
        model, x, guide="laplace", num_steps=600, lr=0.05, lr_decay=0.01, init="prior",
        num_draws=2000, progress=False,
    )
    gaussian = result.guide
    assert isinstance(gaussian, pyro.infer.autoguide.AutoMultivariateNormal)
    cov = (gaussian.scale[:, None] * gaussian.scale_tril) @ (
        gaussian.scale[:, None] * gaussian.scale_tril
    ).T
    assert torch.allclose(gaussian.loc, mean, atol=1e-3 * float(sd[0]))
    assert torch.allclose(result.params["locs"][0], mean, atol=1e-3 * float(sd[0]))
    assert torch.allclose(cov, torch.diag(sd**2), rtol=1e-3, atol=1e-6)
    draws = result.draws["locs"].reshape(-1, 2)
    assert torch.allclose(draws.std(0), sd, rtol=0.1)


def _mixture_log_posterior(model, x: torch.Tensor, params: dict) -> float:
    """log p(theta) + sum_n log sum_k w_k N(x_n | mu_k, Sigma_k), labels summed by scipy."""
    w = params["weights"].double().numpy()
    locs = params["locs"].double().numpy()
    full = model.full_params({k: v.double() for k, v in params.items()}, x.shape[1])
    covs = model.covariances(full).numpy()
    dens = np.stack(
        [w[k] * stats.multivariate_normal(locs[k], covs[k]).pdf(x.double().numpy())
         for k in range(len(w))]
    )
    return float(model.log_prior(params, x)) + float(np.log(dens.sum(0)).sum())


def test_guides_see_the_exact_marginal_density_of_an_enumerated_model(faithful):
    # The density a guide's model evaluates (the Laplace Hessian's) sums the label out: it is
    # the brute-force mixture log posterior, identical from one call (one RNG state) to the
    # next, never conditioned on a random draw of the labels.
    model = GaussianMixture(2, "full")
    params = {
        "weights": torch.tensor([0.4, 0.6]),
        "locs": torch.tensor([[2.0, 55.0], [4.3, 80.0]]),
        "scale": torch.tensor([[0.3, 6.0], [0.4, 6.0]]),
        "corr_chol": torch.linalg.cholesky(torch.tensor([[[1.0, 0.3], [0.3, 1.0]]] * 2)),
    }
    visible = guides.guide_visible_model(model)
    densities = []
    for seed in range(3):
        pyro.set_rng_seed(seed)
        trace = poutine.trace(poutine.condition(visible, data=params)).get_trace(faithful)
        assert "assignment" not in trace.nodes
        densities.append(float(trace.log_prob_sum()))
    assert densities[0] == densities[1] == densities[2]
    assert math.isclose(
        densities[0], _mixture_log_posterior(model, faithful, params), rel_tol=1e-4
    )


def test_laplace_hessian_does_not_depend_on_the_random_state(faithful):
    model = GaussianMixture(2, "full")
    guide = guides.build("laplace", model)
    guide(faithful)
    hessians = []
    for seed in range(2):
        pyro.set_rng_seed(seed)
        hessians.append(guide.negative_log_density_hessian(faithful))
    assert torch.equal(hessians[0], hessians[1])


def _ppca_posterior(w: torch.Tensor, sigma: float, x: torch.Tensor):
    """Tipping & Bishop: z | x ~ N(M^-1 W^T x, sigma^2 M^-1), M = W^T W + sigma^2 I."""
    m = w.T @ w + sigma**2 * torch.eye(w.shape[1])
    return torch.linalg.solve(m, w.T @ x.T).T, (sigma**2 * torch.linalg.inv(m)).diagonal().sqrt()


def _explicit_minibatches(model, x: torch.Tensor, num_steps: int, batch: int):
    """SVI over minibatches given by their row indices, ``model(x[rows], n_obs, rows)``."""
    guide = guides.build("amortized", model)
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.02 ** (1 / num_steps)})
    svi = pyro.infer.SVI(model.model, guide, optim, pyro.infer.Trace_ELBO())
    gen = torch.Generator().manual_seed(0)
    for _ in range(num_steps):
        rows = torch.randperm(x.shape[0], generator=gen)[:batch]
        svi.step(x[rows], n_obs=x.shape[0], subsample=rows)
    return guide


@pytest.mark.parametrize(
    ("minibatch", "rms"),
    [(None, 0.05), ("plate", 0.1), ("explicit", 0.1)],
    ids=["full_batch", "subsampled_plate", "explicit_rows"],
)
def test_amortized_encoder_recovers_the_ppca_posterior(minibatch, rms):
    # Orthogonal loadings make the exact posterior factorise, so the encoder's diagonal
    # Normal family contains it. All globals fixed: the guide is the encoder alone. With
    # minibatches (of 50: the plate subsampling itself, or the model called on given rows) the
    # encoder must read the batch's own rows: a mismatch would leave the means ~1 sd (the
    # signal's spread) from the truth, not within `rms`.
    gen = torch.Generator().manual_seed(0)
    w = torch.tensor([[2.0, 0.5], [1.0, -1.0], [0.0, 1.0], [-1.0, 0.0]])
    sigma = 0.5
    x = torch.randn(200, 2, generator=gen) @ w.T + sigma * torch.randn(200, 4, generator=gen)
    subsample_size = 50 if minibatch == "plate" else None
    model = PPCA(2, loadings=w, noise=torch.tensor(sigma), subsample_size=subsample_size)
    if minibatch == "explicit":
        guide = _explicit_minibatches(model, x, 1000, 50)
    else:
        guide = fit_svi(
            model, x, guide="amortized", num_steps=1000, lr=0.02, lr_decay=0.02, init="prior",
            num_draws=0, progress=False,
        ).guide
    mean, sd = _ppca_posterior(w, sigma, x)
    assert len(guide) == 1  # no global latents: no global part
    median = guide.median(x)["z"]
    assert median.shape == (200, 2)
    assert float((median - mean).square().mean().sqrt()) < rms
    _, scale = guide[0]._posterior(x)["z"]
    assert torch.allclose(scale.mean(0), sd, rtol=0.12)


def test_amortized_guide_draws_z_for_the_subsampled_rows_only():
    x = ppca_data(30)
    model = PPCA(1, subsample_size=7)
    guide = guides.build("amortized", model)
    trace = poutine.trace(guide).get_trace(x)
    index = trace.nodes["obs"]["value"]
    assert trace.nodes["z"]["value"].shape == (7, 1)
    assert len(set(index.tolist())) == 7 and int(index.max()) < 30
    # The model replayed on the guide's trace uses the same rows.
    model_trace = poutine.trace(poutine.replay(model.model, trace=trace)).get_trace(x)
    assert torch.equal(model_trace.nodes["x"]["value"], x[index])


# ---------------------------------------------------------------------- structure
def test_latent_sites_mark_the_local_ones():
    x = ppca_data(12)
    sites = guides.latent_sites(PPCA(2), x)
    assert list(sites) == ["loadings", "noise", "z"]
    assert [s.local for s in sites.values()] == [False, False, True]
    assert sites["z"].shape == (12, 2) and sites["loadings"].shape == (3, 2)
    assert list(guides.global_latent_supports(PPCA(2), x)) == ["loadings", "noise"]


def test_mixture_globals_are_read_from_the_marginal_model(faithful):
    sites = guides.latent_sites(GaussianMixture(2, "full"), faithful)
    assert list(sites) == ["weights", "locs", "scale", "corr_chol"]
    assert [s.shape for s in sites.values()] == [(2,), (2, 2), (2, 2), (2, 2, 2)]


def test_a_model_without_marginal_model_has_its_labels_blocked(faithful):
    gmm = GaussianMixture(2)
    bare = SimpleNamespace(model=gmm.model, enumerated_sites=("assignment",))
    trace = poutine.trace(guides.guide_visible_model(bare)).get_trace(faithful)
    assert "assignment" not in trace.nodes and "x" in trace.nodes


# ---------------------------------------------------------------------- errors
def test_unknown_kind_lists_the_kinds_that_apply():
    with pytest.raises(
        ValueError,
        match=r"unknown guide kind 'nope'; kinds that apply to GaussianMixture: flow, "
        r"full_rank, laplace, low_rank, map, mean_field \(or pass a guide callable\)",
    ):
        guides.build("nope", GaussianMixture(2))


def test_amortized_is_refused_without_continuous_local_latents():
    with pytest.raises(
        ValueError,
        match=r"'amortized' cannot serve GaussianMixture: model has no continuous "
        r"per-observation latents to amortise \(its local sites \['assignment'\] are "
        r"enumerated\); kinds that apply: flow, full_rank, laplace, low_rank, map, mean_field$",
    ):
        guides.build("amortized", GaussianMixture(2))


def test_laplace_is_refused_for_enumerated_sites_without_marginal_model():
    bare = SimpleNamespace(model=GaussianMixture(2).model, enumerated_sites=("assignment",))
    with pytest.raises(
        ValueError,
        match=r"'laplace' cannot serve SimpleNamespace: .*no marginal_model.*; kinds that "
        r"apply: flow, full_rank, low_rank, map, mean_field$",
    ):
        guides.build("laplace", bare)
    assert guides.applicable_kinds(bare) == ["flow", "full_rank", "low_rank", "map", "mean_field"]


def test_laplace_refuses_a_point_that_is_not_a_mode():
    # PPCA started at W = 0, z = 0 (the prior median) is a saddle of the joint posterior.
    with pytest.raises(torch.linalg.LinAlgError, match="not positive definite"):
        fit_svi(PPCA(2), ppca_data(20), guide="laplace", num_steps=1, init="prior",
                progress=False)


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("map", {"rank": 2}, r"'map' takes no option\(s\) \['rank'\]; its options: "),
        ("mean_field", {"num_transforms": 2}, r"'mean_field' takes no option.*'num_transforms'"),
        ("full_rank", {"rank": 2}, r"'full_rank' takes no option.*'rank'"),
        ("low_rank", {"rank": 0}, r"'low_rank': rank must be a positive integer; got 0"),
        ("low_rank", {"rank": 1.5}, r"rank must be a positive integer; got 1.5"),
        ("flow", {"num_transforms": 0}, r"'flow': num_transforms must be a positive integer"),
        ("flow", {"init_scale": 0.0}, r"'flow': init_scale must be a positive number"),
        ("flow", {"rank": 2}, r"'flow' takes no option.*'rank'"),
        ("laplace", {"init_scale": 0.1}, r"'laplace' takes no option.*'init_scale'"),
        ("amortized", {"global_kind": "laplace"},
         r"global_kind must be one of \['flow', 'full_rank', 'low_rank', 'map', "
         r"'mean_field'\].*got 'laplace' \(a Laplace approximation needs"),
        ("amortized", {"global_kind": "nope"}, r"global_kind must be one of .*got 'nope'$"),
        ("amortized", {"hidden": (64, 0)}, r"hidden must be a sequence of positive integers"),
        ("amortized", {"hidden": 64}, r"hidden must be a sequence of positive integers"),
        ("amortized", {"inputs": 3}, r"inputs must be callable"),
        ("amortized", {"global_kind": "map", "rank": 2}, r"'map' takes no option.*'rank'"),
    ],
)
def test_bad_options_are_refused_by_name(kind, options, message):
    with pytest.raises(ValueError, match=message):
        guides.build(kind, PPCA(1), **options)


def test_options_with_a_callable_guide_are_refused():
    with pytest.raises(ValueError, match=r"options \['rank'\] apply to named guide kinds"):
        guides.build(lambda data: None, GaussianMixture(2), rank=2)


def test_a_callable_guide_passes_through():
    def my_guide(data):
        return None

    assert guides.build(my_guide, GaussianMixture(2)) is my_guide


def test_a_non_model_is_refused():
    with pytest.raises(TypeError, match="Pyro model"):
        guides.build("map", 3)


class _Declared(PPCA):
    """PPCA whose declarations disagree with what it samples."""

    def __init__(self, local_sites, discrete=False):
        super().__init__(1)
        self.local_sites = local_sites
        self.discrete = discrete

    def model(self, data):
        w = pyro.sample("loadings", dist.Normal(torch.zeros(data.shape[1], 1), 1.0).to_event(2))
        u = pyro.sample("u", dist.Normal(0.0, 1.0))  # a global, declared local by mistake
        with pyro.plate("obs", data.shape[0]):
            if self.discrete:
                z = pyro.sample("z", dist.Bernoulli(0.5)).unsqueeze(-1)
            else:
                z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z * w.T + u, 1.0).to_event(1), obs=data)


@pytest.mark.parametrize(
    ("local_sites", "discrete", "message"),
    [
        (("z", "h"), False, r"local sites \['h'\] are declared but the model samples no such"),
        (("u",), False, r"local site 'u' is not inside the local plate 'obs'"),
        (("z",), True, r"local site 'z' is discrete .*continuous latents only"),
    ],
)
def test_amortized_checks_the_declarations_against_the_traced_run(local_sites, discrete, message):
    guide = guides.build("amortized", _Declared(local_sites, discrete))
    with pytest.raises(ValueError, match=message):
        guide(ppca_data(10))


def test_amortized_refuses_inputs_that_do_not_match_the_plate():
    x = ppca_data(10)
    guide = guides.build("amortized", PPCA(1), inputs=lambda data: data[:4])
    with pytest.raises(ValueError, match=r"inputs have 4 rows, but plate 'obs' has 10 members"):
        guide(x)


@pytest.mark.slow
def test_laplace_on_old_faithful_matches_nuts():
    # Two well-separated clusters, 272 points: the posterior of the unconstrained globals is
    # close to Gaussian, so the Laplace approximation's sds match NUTS's (the reference).
    x, _ = load("faithful")
    model = GaussianMixture(2, "full")
    laplace = fit_svi(model, x, guide="laplace", num_steps=1500, lr=0.05, num_draws=4000,
                      progress=False)
    nuts = fit_mcmc(model, x, num_samples=500, warmup_steps=300, num_chains=1, progress=False)
    order = laplace.params["locs"][:, 0].argsort()
    nuts_order = nuts.params["locs"][:, 0].argsort()
    for name in ("weights", "locs", "scale"):
        ours = laplace.draws[name].reshape(-1, *laplace.draws[name].shape[2:])[:, order]
        ref = nuts.draws[name].reshape(-1, *nuts.draws[name].shape[2:])[:, nuts_order]
        # The mode is not the mean of a skewed (scale) posterior: within 0.3 posterior sd.
        assert bool(((ours.mean(0) - ref.mean(0)).abs() <= 0.3 * ref.std(0)).all()), name
        assert torch.allclose(ours.std(0), ref.std(0), rtol=0.2), name


def test_amortized_takes_a_user_callable_for_the_globals():
    x = ppca_data(20)

    def point_globals(data):
        loadings = pyro.param("w_hat", torch.ones(3, 1))
        noise = pyro.param("noise_hat", torch.tensor(1.0), constraint=dist.constraints.positive)
        pyro.sample("loadings", dist.Delta(loadings, event_dim=2))
        pyro.sample("noise", dist.Delta(noise))

    guide = guides.build("amortized", PPCA(1), global_kind=point_globals)
    svi = pyro.infer.SVI(PPCA(1).model, guide, pyro.optim.Adam({"lr": 0.01}),
                         pyro.infer.Trace_ELBO())
    assert all(math.isfinite(svi.step(x)) for _ in range(3))
    trace = poutine.trace(guide).get_trace(x)
    # The globals come from the user's guide (trained away from its start), z from the encoder.
    w_hat = pyro.param("w_hat").detach()
    assert torch.equal(trace.nodes["loadings"]["value"].detach(), w_hat)
    assert not torch.equal(w_hat, torch.ones(3, 1))
    assert trace.nodes["z"]["value"].shape == (20, 1)
    assert len(guide) == 2


class _LocalScales:
    """x_n ~ N(0, tau_n^2), tau_n ~ Gamma(2, 2): a positive per-observation latent."""

    local_plate = "obs"
    local_sites = ("tau",)

    def model(self, data):
        with pyro.plate("obs", data.shape[0]):
            tau = pyro.sample("tau", dist.Gamma(2.0, 2.0))
            pyro.sample("x", dist.Normal(0.0, tau), obs=data)


def test_amortized_draws_a_constrained_local_latent_in_its_support():
    x = torch.randn(15)
    guide = guides.build("amortized", _LocalScales())
    svi = pyro.infer.SVI(_LocalScales().model, guide, pyro.optim.Adam({"lr": 0.01}),
                         pyro.infer.Trace_ELBO())
    assert all(math.isfinite(svi.step(x)) for _ in range(3))
    tau = poutine.trace(guide).get_trace(x).nodes["tau"]["value"]
    assert tau.shape == (15,) and bool((tau > 0).all())
    assert guide.median(x)["tau"].shape == (15,)
