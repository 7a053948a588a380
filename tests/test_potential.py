"""The closed-form NUTS potentials (generic, plain-tensor, compiled) against Pyro's, built from
a trace of the Pyro model."""

from __future__ import annotations

import itertools

import pyro.distributions as dist
import pytest
import torch
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import potential_grad

from ppl_models.infer.compiled_potential import NUTSPotential, value_and_grad
from ppl_models.infer.init import init_strategy
from ppl_models.infer.mixture_potential import MixturePotential, mixture_potential
from ppl_models.infer.potential import CollapsedPotential
from ppl_models.models import MIXTURES, CollapsedPosterior, GaussianMixture, StudentTMixture

CASES = list(itertools.product(sorted(MIXTURES), ("full", "diag", "spherical"), (1, 3)))


def _data(n=40, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[: n // 2] += 3.0
    return x * torch.tensor([1.0, 5.0, 0.2], dtype=torch.float64)[:d] + 10.0


def _pyro_potential(model, data, enumerate_labels):
    """Pyro's own potential: the enumerated model, or the collapsed one, traced."""
    fn = model.model if enumerate_labels else model.marginal_model
    init = {"locs": data[: model.n_components].clone()}
    _, potential_fn, transforms, _ = initialize_model(
        fn, model_args=(data,), max_plate_nesting=1, init_strategy=init_strategy(init)
    )
    return potential_fn, transforms


def _value_and_grad(fn, point):
    point = {k: v.detach().clone().requires_grad_(True) for k, v in point.items()}
    value = fn(point)
    grads = torch.autograd.grad(value, list(point.values()))
    return value.detach(), dict(zip(point, grads, strict=True))


@pytest.mark.parametrize(("name", "covariance_type", "k"), CASES)
def test_potential_and_gradient_equal_pyros(name, covariance_type, k):
    data = _data()
    model = MIXTURES[name](k, covariance_type)
    assert isinstance(model, CollapsedPosterior)
    ours = CollapsedPotential(model, data)
    g = torch.Generator().manual_seed(1)
    for enumerate_labels in (False, True):
        reference, transforms = _pyro_potential(model, data, enumerate_labels)
        assert set(transforms) == set(ours.sites)
        for _ in range(3):
            point = {}
            for site in ours.sites:
                shape = transforms[site](ours.priors[site].sample()).shape
                point[site] = torch.randn(shape, generator=g, dtype=torch.float64)
            value, grad = _value_and_grad(ours, point)
            expected, expected_grad = _value_and_grad(reference, point)
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
            for site in point:
                torch.testing.assert_close(grad[site], expected_grad[site], rtol=1e-6, atol=1e-6)


def test_user_priors_and_fixed_sites_are_respected():
    data = _data(d=2)
    priors = {
        "scale": dist.LogNormal(0.0, 1.0),
        "corr_chol": dist.LKJCholesky(2, torch.tensor(4.0, dtype=torch.float64)),
        "weights": torch.tensor([0.3, 0.7], dtype=torch.float64),
    }
    model = GaussianMixture(2, "full", priors=priors)
    ours = CollapsedPotential(model, data)
    assert ours.sites == ("locs", "scale", "corr_chol")
    reference, _ = _pyro_potential(model, data, enumerate_labels=False)
    g = torch.Generator().manual_seed(2)
    point = {
        "locs": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "scale": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "corr_chol": torch.randn(2, 1, generator=g, dtype=torch.float64),
    }
    value, grad = _value_and_grad(ours, point)
    expected, expected_grad = _value_and_grad(reference, point)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
    for site in point:
        torch.testing.assert_close(grad[site], expected_grad[site], rtol=1e-6, atol=1e-6)


def test_constrain_inverts_unconstrain():
    data = _data()
    model = GaussianMixture(3, "full")
    ours = CollapsedPotential(model, data)
    values = {name: prior.sample() for name, prior in ours.priors.items()}
    back = ours.constrain(ours.unconstrain(values))
    for name in values:
        torch.testing.assert_close(back[name], values[name])
    with pytest.raises(ValueError, match="missing the global sites"):
        ours.unconstrain({"locs": values["locs"]})


def test_refuses_a_model_without_a_closed_form_posterior():
    with pytest.raises(ValueError, match="CollapsedPosterior"):
        CollapsedPotential(object(), _data())


# ----------------------------------------------------------------------------- plain tensors
def _random_point(fast, generator, batch=()):
    return torch.randn(*batch, fast.size, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize(("name", "covariance_type", "k"), CASES)
def test_plain_tensor_potential_and_gradient_equal_pyros(name, covariance_type, k):
    """MixturePotential (no distribution objects) against Pyro's trace potential of the
    enumerated and of the collapsed model, value and gradient, at random points."""
    data = _data()
    model = MIXTURES[name](k, covariance_type)
    fast = mixture_potential(CollapsedPotential(model, data))
    assert isinstance(fast, MixturePotential)
    vg = value_and_grad(fast)
    g = torch.Generator().manual_seed(4)
    u = _random_point(fast, g, (3,))
    value, grad = vg(u)
    assert value.shape == (3,) and grad.shape == (3, fast.size)
    for enumerate_labels in (False, True):
        reference, transforms = _pyro_potential(model, data, enumerate_labels)
        assert set(transforms) == set(fast.sites)
        for b in range(3):
            point = fast.unpack(u[b])
            expected, expected_grad = _value_and_grad(reference, point)
            torch.testing.assert_close(value[b], expected, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(grad[b], fast.pack(expected_grad), rtol=1e-6, atol=1e-6)


def test_plain_tensor_potential_with_user_priors_and_fixed_sites():
    data = _data(d=2)
    priors = {
        "scale": dist.LogNormal(torch.tensor([0.5, -0.2]), 1.5),
        "corr_chol": dist.LKJCholesky(2, torch.tensor(4.0, dtype=torch.float64)),
        "weights": torch.tensor([0.3, 0.7], dtype=torch.float64),
    }
    for model in (GaussianMixture(2, "full", priors=priors),
                  StudentTMixture(2, "full", priors=priors, df=2.5),
                  GaussianMixture(3, "diag", priors={"locs": dist.Normal(1.0, 4.0),
                                                     "weights": dist.Dirichlet(
                                                         torch.tensor([0.5, 2.0, 3.0]))})):
        fast = mixture_potential(CollapsedPotential(model, data))
        assert fast is not None
        reference, _ = _pyro_potential(model, data, enumerate_labels=False)
        g = torch.Generator().manual_seed(2)
        for _ in range(3):
            u = _random_point(fast, g, (1,))
            value, grad = value_and_grad(fast)(u)
            expected, expected_grad = _value_and_grad(reference, fast.unpack(u[0]))
            torch.testing.assert_close(value[0], expected, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(grad[0], fast.pack(expected_grad), rtol=1e-6, atol=1e-6)


def test_the_weights_of_an_extreme_point_stay_finite():
    """Stick-breaking through logsigmoid: log-weights exact where the weights underflow."""
    data = _data(d=2)
    fast = mixture_potential(CollapsedPotential(GaussianMixture(3, "diag"), data))
    u = torch.zeros(1, fast.size, dtype=torch.float64)
    u[0, fast.slices["weights"]] = torch.tensor([-800.0, 0.0], dtype=torch.float64)
    value, grad = value_and_grad(fast)(u)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()


def test_other_prior_families_and_model_classes_keep_the_generic_potential():
    data = _data(d=2)
    half_normal = GaussianMixture(2, "diag", priors={"scale": dist.HalfNormal(2.0)})
    assert mixture_potential(CollapsedPotential(half_normal, data)) is None

    class Shifted(GaussianMixture):  # a subclass may change the component density
        pass

    assert mixture_potential(CollapsedPotential(Shifted(2, "diag"), data)) is None


def test_nuts_potential_gives_pyro_the_closed_form_gradient():
    """Through Pyro's own potential_grad (what its integrator calls)."""
    data = _data()
    model = StudentTMixture(2, "full")
    fast = mixture_potential(CollapsedPotential(model, data))
    reference, _ = _pyro_potential(model, data, enumerate_labels=False)
    point = fast.unpack(_random_point(fast, torch.Generator().manual_seed(3)))
    grads, value = potential_grad(NUTSPotential(fast), dict(point))
    expected_grads, expected = potential_grad(reference, {k: v.clone() for k, v in point.items()})
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
    for site in point:
        torch.testing.assert_close(grads[site], expected_grads[site], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_compiled_potential_equals_pyros_and_follows_its_data():
    """torch.compile changes no number; a second data set of the same shape (a cache hit for
    the compiler) gives its own potential, not the first one's."""
    model = GaussianMixture(2, "full")
    g = torch.Generator().manual_seed(6)
    for seed in (0, 1):
        data = _data(n=25, seed=seed)
        fast = mixture_potential(CollapsedPotential(model, data))
        compiled = NUTSPotential(fast, compile=True)
        reference, _ = _pyro_potential(model, data, enumerate_labels=True)
        for _ in range(2):
            point = fast.unpack(_random_point(fast, g))
            grads, value = potential_grad(compiled, dict(point))
            expected_grads, expected = potential_grad(
                reference, {k: v.clone() for k, v in point.items()}
            )
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
            for site in point:
                torch.testing.assert_close(grads[site], expected_grads[site], rtol=1e-6,
                                           atol=1e-6)
