"""The guides package: families by name, enumerated sites hidden, clear errors."""

from __future__ import annotations

import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import Adam

import guides
from ppl_models.data import load
from ppl_models.models import GaussianMixture, StudentTMixture


@pytest.fixture(scope="module")
def faithful():
    x, _ = load("faithful")
    return x[:60]


@pytest.mark.parametrize("kind", sorted(guides.KINDS))
@pytest.mark.parametrize("model_cls", [GaussianMixture, StudentTMixture])
def test_every_kind_hides_the_label_and_draws_in_support(kind, model_cls, faithful):
    model = model_cls(2, "full")
    guide = guides.build(kind, model)
    svi = SVI(model.model, guide, Adam({"lr": 0.01}), TraceEnum_ELBO(max_plate_nesting=1))
    losses = [svi.step(faithful) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    trace = poutine.trace(guide).get_trace(faithful)
    assert "assignment" not in trace.nodes
    sites = guides.global_latent_supports(model, faithful)
    assert list(sites) == ["weights", "locs", "scale", "corr_chol"]
    for name, support in sites.items():
        value = trace.nodes[name]["value"]
        expected = {"weights": (2,), "locs": (2, 2), "scale": (2, 2), "corr_chol": (2, 2, 2)}
        assert tuple(value.shape) == expected[name]
        assert bool(support.check(value).all()), name


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown guide kind 'nope'.*full_rank.*mean_field"):
        guides.build("nope", GaussianMixture(2))


def test_a_callable_guide_passes_through():
    def my_guide(data):
        return None

    assert guides.build(my_guide, GaussianMixture(2)) is my_guide


def test_a_non_model_is_refused():
    with pytest.raises(TypeError, match="Pyro model"):
        guides.build("map", 3)


def test_low_rank_takes_its_rank(faithful):
    guide = guides.build("low_rank", GaussianMixture(2), rank=2)
    guide(faithful)
    assert guide.rank == 2
