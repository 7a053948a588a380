"""The closed-form NUTS potential against Pyro's, built from a trace of the Pyro model."""

from __future__ import annotations

import itertools

import pyro.distributions as dist
import pytest
import torch
from pyro.infer.mcmc.util import initialize_model

from ppl_models.infer.init import init_strategy
from ppl_models.infer.potential import CollapsedPotential
from ppl_models.models import MIXTURES, CollapsedPosterior, GaussianMixture

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
