"""The model contracts: every registered class meets the roles it declares, and a user's class
that meets a role by shape alone (no inheritance) is served by the generic paths.

References are independent: traced Pyro runs for shapes and dims, a hand-written NumPy EM and
scipy densities for the user's model.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from scipy import stats
from scipy.special import logsumexp

from ppl_models import fit_em
from ppl_models.diagnostics import to_inference_data
from ppl_models.models import (
    DCGAN,
    GAN,
    GMVAE,
    MIXTURES,
    MODELS,
    VAE,
    AdversarialAutoencoder,
    AdversarialModel,
    AmortizedModel,
    ClosedFormEM,
    ClusteringAdversarialAutoencoder,
    CollapsedLikelihood,
    GaussianMixture,
    ImportanceWeighted,
    InfoGAN,
    LabelledAdversarialAutoencoder,
    LabelledAmortized,
    LatentModel,
    MixtureModel,
    WassersteinAutoencoder,
    protocols,
    with_labels,
)

ROLES = (
    LatentModel, CollapsedLikelihood, MixtureModel, ClosedFormEM, ImportanceWeighted,
    AmortizedModel, LabelledAmortized, AdversarialModel,
)

#: A small instance of every registered class, by registry name.
EXAMPLES = {
    "gmm": lambda: GaussianMixture(3, "full"),
    "student_t_mixture": lambda: MIXTURES["student_t_mixture"](2, "diag", df=5.0),
    "vae": lambda: VAE(6, 2, prior="vamp", hidden=(8,)),
    "gmvae": lambda: GMVAE(6, 2, 3, hidden=(8,)),
    "gan": lambda: GAN(2, 2, hidden=(8,), d_hidden=(8,)),
    "dcgan": lambda: DCGAN(4, channels=(2, 4), output="real"),
    "infogan": lambda: InfoGAN(2, 3, n_categories=3, hidden=(8,), d_hidden=(8,), q_hidden=(8,)),
    "aae": lambda: AdversarialAutoencoder(2, 2, hidden=(8,), d_hidden=(8,)),
    "wae": lambda: WassersteinAutoencoder(2, 2, penalty="gan", hidden=(8,), d_hidden=(8,)),
    "clustering_aae": lambda: ClusteringAdversarialAutoencoder(2, 3, 2, hidden=(8,),
                                                               encoder="gaussian"),
    "labelled_aae": lambda: LabelledAdversarialAutoencoder(1, 2, prior=dist.MixtureSameFamily(
        dist.Categorical(logits=torch.zeros(3)), dist.Normal(torch.randn(3, 2), 1.0).to_event(1))),
}

#: What each registered class must declare (by inheritance).
DECLARED = {
    "gmm": {LatentModel, CollapsedLikelihood, MixtureModel, ClosedFormEM},
    "student_t_mixture": {LatentModel, CollapsedLikelihood, MixtureModel},
    "vae": {LatentModel, ImportanceWeighted, AmortizedModel},
    "gmvae": {LatentModel, ImportanceWeighted, AmortizedModel, LabelledAmortized},
    "gan": {LatentModel, AdversarialModel},
    "dcgan": {LatentModel, AdversarialModel},
    "infogan": {LatentModel, AdversarialModel},
    "aae": {LatentModel, AdversarialModel},
    "wae": {LatentModel, AdversarialModel},
    "clustering_aae": {LatentModel, AdversarialModel},
    "labelled_aae": {LatentModel, AdversarialModel},
}


def test_every_registered_class_has_an_example():
    assert set(EXAMPLES) == set(MODELS) == set(DECLARED)
    assert set(MIXTURES) == {"gmm", "student_t_mixture"}
    for name, cls in MODELS.items():
        assert cls.name == name


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_registered_class_declares_and_meets_its_roles(name):
    model = EXAMPLES[name]()
    cls = MODELS[name]
    declared = {role for role in ROLES if role in cls.__mro__}
    assert declared == DECLARED[name]
    for role in ROLES:
        # the structural check agrees with the declaration
        assert isinstance(model, role) == (role in declared), role.__name__
    # no abstract member of a declared role is left unimplemented
    assert not inspect.isabstract(cls)
    assert cls.from_config(model.config(), dict(model.priors)).config() == model.config()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_dims_cover_every_traced_site_with_its_rank(name):
    model = EXAMPLES[name]()
    x = (torch.rand(5, 6) < 0.5).float() if isinstance(model, AmortizedModel) else torch.randn(
        20, 784 if name == "dcgan" else 2
    )
    if name == "labelled_aae":  # one pixel and the label (-1: unlabelled)
        x = with_labels(torch.randn(20, 1), torch.arange(20) % 4 - 1)
    with torch.no_grad():
        # without an enumeration handler the labels are drawn: every site has its own shape
        trace = poutine.trace(model.model).get_trace(model.validate(x))
    dims = model.dims()
    for site_name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        assert site_name in dims, site_name
        value = site["value"]
        assert len(dims[site_name]) == value.dim(), site_name
        assert ("obs" in dims[site_name]) == (site_name in model.local_sites
                                              or site_name == model.observed_site), site_name
    if isinstance(model, CollapsedLikelihood):
        d = x.shape[1]
        params = {k: v for k, v in model.full_params(
            {s: trace.nodes[s]["value"] for s in model.global_sites(d)}, d).items()}
        for site_name, shape in model.site_shapes(d).items():
            assert len(dims[site_name]) == len(shape), site_name
        for q_name, value in model.derived_quantities(params, d).items():
            assert len(dims[q_name]) == value.dim(), q_name


@pytest.mark.parametrize("name", ["gmm", "student_t_mixture"])
def test_relabel_sites_point_at_the_component_axis(name):
    model = EXAMPLES[name]()
    d = 2
    trace = poutine.trace(model.model).get_trace(None, n_obs=4, n_features=d)
    values = {s: trace.nodes[s]["value"] for s in model.global_sites(d)}
    values.update(model.derived_quantities(values, d))
    sites = model.relabel_sites()
    assert model.location_site in sites
    for site_name, value in values.items():
        assert site_name in sites, site_name
        assert value.shape[sites[site_name]] == model.n_components, site_name
        assert model.dims()[site_name][value.dim() + sites[site_name]] == "component"


@pytest.mark.parametrize("cov", ["full", "diag", "spherical"])
def test_closed_form_hooks_agree_with_the_exact_e_and_m_steps(cov):
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, 3, generator=gen) - 2, torch.randn(20, 3, generator=gen) + 2])
    x = x.double()
    model = GaussianMixture(2, cov)
    resp = torch.softmax(torch.randn(50, 2, generator=gen, dtype=torch.float64), -1)
    state = model.m_step(x, resp, reg_covar=1e-6)
    log_resp, log_norm = model.e_step(x, state)
    expected_next = model.m_step(x, log_resp.exp(), reg_covar=1e-6)
    prepared = model.em_prepare(x)
    assert prepared.features is not None
    for prep in (prepared, prepared._replace(features=None)):  # fast and exact paths
        ll, new = model.em_iteration(prep, state, 1e-6)
        assert ll == pytest.approx(float(log_norm.sum()), rel=1e-10)
        assert model.em_log_likelihood(prep, state) == pytest.approx(ll, rel=1e-10)
        for key, value in expected_next.items():
            torch.testing.assert_close(new[key], value, rtol=1e-8, atol=1e-10)
    # the exact path against scipy's densities
    full = model.em_params(state)
    cov_full = model.covariances(model.full_params(full, 3))
    dens = np.stack([
        np.log(float(full["weights"][k])) + stats.multivariate_normal(
            full["locs"][k].numpy(), cov_full[k].numpy()).logpdf(x.numpy())
        for k in range(2)
    ])
    assert ll == pytest.approx(float(logsumexp(dens, axis=0).sum()), rel=1e-10)


# ------------------------------------------------------------------ a user's own model
class TwoMeans:
    """A user's model written from the protocols' documentation, inheriting nothing:
    ``x_n ~ 0.5 N(mu_1, 1) + 0.5 N(mu_2, 1)`` in one dimension, ``mu_k ~ N(0, 10^2)``."""

    name = "two_means"
    local_plate = "obs"
    local_sites = ("label",)
    enumerated_sites = ("label",)
    observed_site = "x"
    max_plate_nesting = 1
    priors: ClassVar[dict] = {}

    def model(self, data=None):
        locs = pyro.sample("locs", dist.Normal(torch.zeros(2, dtype=data.dtype), 10.0).to_event(1))
        with pyro.plate(self.local_plate, data.shape[0]):
            label = pyro.sample("label", dist.Categorical(torch.full((2,), 0.5, dtype=data.dtype)),
                                infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[label].unsqueeze(-1), 1.0).to_event(1), obs=data)

    def validate(self, data):
        data = torch.as_tensor(data)
        if data.dim() != 2 or data.shape[1] != 1:
            raise ValueError(f"TwoMeans takes (N, 1) data; got {tuple(data.shape)}")
        return data

    def config(self):
        return {}

    def dims(self):
        return {"locs": ["component"], "x": ["obs", "feature"], "label": ["obs"]}

    # CollapsedLikelihood
    def marginal_model(self, data):
        locs = pyro.sample("locs", dist.Normal(torch.zeros(2, dtype=data.dtype), 10.0).to_event(1))
        pyro.factor("ll", self.log_likelihood(data, {"locs": locs}).sum())

    def log_likelihood(self, data, params):
        locs = params["locs"]  # (*batch, 2)
        comp = dist.Normal(locs, 1.0).log_prob(data.reshape(-1, *([1] * locs.dim())))
        return (comp.logsumexp(-1) + np.log(0.5)).movedim(0, -1)

    def site_shapes(self, n_features):
        return {"locs": (2,)}

    def global_sites(self, n_features):
        return ["locs"]

    def full_params(self, params, n_features):
        return dict(params)

    def derived_quantities(self, params, n_features):
        return {}


def _numpy_em(x: np.ndarray, mu: np.ndarray, iters: int) -> np.ndarray:
    """EM for the means of an equal-weight, unit-variance mixture (the textbook updates)."""
    for _ in range(iters):
        log_r = stats.norm.logpdf(x[:, None], mu[None, :], 1.0)
        r = np.exp(log_r - logsumexp(log_r, axis=1, keepdims=True))
        mu = (r * x[:, None]).sum(0) / r.sum(0)
    return mu


def test_a_structural_model_works_with_generic_em_and_arviz():
    model = TwoMeans()
    assert isinstance(model, LatentModel) and isinstance(model, CollapsedLikelihood)
    assert not isinstance(model, MixtureModel)
    gen = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(40, 1, generator=gen) - 2.5, torch.randn(60, 1, generator=gen) + 2])
    x = x.double()
    start = np.array([-1.0, 1.0])
    result = fit_em(model, x, init={"locs": torch.tensor(start)}, objective="ml", max_iter=200,
                    tol=1e-10, progress=False)
    assert result.info["m_step"] == "generic"
    expected = _numpy_em(x[:, 0].numpy(), start, 500)
    np.testing.assert_allclose(result.params["locs"].numpy(), expected, atol=1e-5)
    assert result.info["n_parameters"] == 2

    idata = to_inference_data(result, num_predictive=3)
    assert idata.posterior["locs"].dims == ("chain", "draw", "component")
    mu = idata.posterior["locs"].values[0, 0]
    expected_ll = logsumexp(
        stats.norm.logpdf(x.numpy(), mu[None, :], 1.0) + np.log(0.5), axis=1
    )
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0, 0], expected_ll, rtol=1e-10)
    assert idata.posterior_predictive["x"].shape == (1, 3, 100, 1)

    with pytest.raises(ValueError, match="init='kmeans' needs a mixture"):  # the default start
        fit_em(model, x, progress=False)


def test_roles_are_abstract_for_classes_that_inherit_them():
    class Half(protocols.LatentModel):
        name = "half"

    with pytest.raises(TypeError, match="abstract"):
        Half()
