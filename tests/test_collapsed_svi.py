"""The closed-form collapsed ELBO against Pyro's TraceEnum_ELBO on the enumerated model."""

from __future__ import annotations

import itertools

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO

import guides
from ppl_models.infer import fit_svi, full_batch
from ppl_models.infer.collapsed_svi import CollapsedELBO, supports_guide
from ppl_models.infer.compiled_potential import NUTSPotential
from ppl_models.infer.init import init_strategy
from ppl_models.infer.mixture_potential import mixture_potential
from ppl_models.infer.potential import CollapsedPotential
from ppl_models.models import MIXTURES, GaussianMixture

KINDS = ("map", "mean_field", "full_rank", "low_rank", "flow", "laplace")
CASES = [
    *itertools.product(KINDS, ("gmm",), ("full",)),
    *itertools.product(("mean_field", "full_rank"), sorted(MIXTURES), ("diag", "spherical")),
    ("mean_field", "student_t_mixture", "full"),
]


def _data(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x[: n // 2] += 4.0
    return x * torch.tensor([1.0, 3.0], dtype=torch.float64)


def _guide(kind, model, data):
    start = {"locs": data[[0, -1]].clone()}
    guide = guides.build(kind, model, init_loc_fn=init_strategy(start))
    guide(data)  # set up its parameters
    # move every parameter off its starting value so the check is not at a special point
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in guide.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=g, dtype=param.dtype))
    return guide


def _loss_and_grads(loss, model_fn, guide, data, seed):
    params = list(guide.parameters())
    for p in params:
        p.grad = None
    pyro.set_rng_seed(seed)
    value = loss.loss_and_grads(model_fn, guide, data)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    return value, grads


def _energy(potential, form):
    """The potential energy CollapsedELBO is given: generic (None), plain tensors or compiled."""
    if form == "generic":
        return None
    return NUTSPotential(mixture_potential(potential), compile=form == "compiled")


@pytest.mark.parametrize("form", ["generic", "plain"])
@pytest.mark.parametrize(("kind", "name", "covariance_type"), CASES)
def test_collapsed_elbo_equals_trace_enum_elbo_draw_for_draw(kind, name, covariance_type, form):
    _check_against_trace_enum(kind, name, covariance_type, form)


@pytest.mark.slow
def test_compiled_collapsed_elbo_equals_trace_enum_elbo_draw_for_draw():
    _check_against_trace_enum("full_rank", "gmm", "full", "compiled")
    _check_against_trace_enum("mean_field", "student_t_mixture", "diag", "compiled")


def _check_against_trace_enum(kind, name, covariance_type, form):
    data = _data()
    model = MIXTURES[name](2, covariance_type)
    guide = _guide(kind, model, data)
    assert supports_guide(guide)
    potential = CollapsedPotential(model, data)
    ours = CollapsedELBO(potential, num_particles=2, energy=_energy(potential, form))
    pyros = TraceEnum_ELBO(max_plate_nesting=1, num_particles=2)
    for seed in (0, 1):
        value, grads = _loss_and_grads(ours, model.model, guide, data, seed)
        expected, expected_grads = _loss_and_grads(pyros, model.model, guide, data, seed)
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-8)
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-8)
        pyro.set_rng_seed(seed)
        assert ours.loss(model.model, guide, data) == pytest.approx(value, rel=1e-12)


def test_fit_svi_takes_the_collapsed_elbo_where_it_can():
    data = _data()
    fit = fit_svi(GaussianMixture(2), data, guide="full_rank", num_steps=5, progress=False)
    assert fit.info["loss"] == "CollapsedELBO"
    model = GaussianMixture(2)
    guide = _guide("mean_field", model, data)
    optim = pyro.optim.Adam({"lr": 0.01})
    plain = SVI(model.model, guide, optim, Trace_ELBO())  # not the enumerated ELBO: kept
    assert full_batch.collapsed_svi(model, plain, data) is plain
    enum = SVI(model.model, guide, optim, TraceEnum_ELBO(max_plate_nesting=1))
    assert full_batch.collapsed_svi(object(), enum, data) is enum  # no closed form: kept


@pytest.mark.slow
def test_fit_svi_with_the_collapsed_elbo_reaches_trace_enums_optimum(monkeypatch):
    """The same fit (seed, steps, guide) with either loss ends at the same ELBO and place."""
    data = _data(n=60)
    model = GaussianMixture(2, "diag")
    fits = {}
    for fast in (True, False):
        if not fast:  # the full-batch loop keeps Pyro's TraceEnum_ELBO
            monkeypatch.setattr(full_batch, "collapsed_svi", lambda model, svi, data: svi)
        fits[fast] = fit_svi(model, data, guide="mean_field", num_steps=300, lr=0.05, seed=0,
                             progress=False)
    assert fits[True].info["loss"] == "CollapsedELBO"
    assert fits[False].info["loss"] == "TraceEnum_ELBO"
    last = {fast: sum(fit.history["elbo"][-50:]) / 50 for fast, fit in fits.items()}
    assert last[True] == pytest.approx(last[False], abs=0.02)
    torch.testing.assert_close(fits[True].params["locs"], fits[False].params["locs"], atol=0.1,
                               rtol=0)


def test_refuses_bad_particles_and_foreign_guides():
    data = _data()
    potential = CollapsedPotential(GaussianMixture(2), data)
    with pytest.raises(ValueError, match="num_particles must be a positive integer"):
        CollapsedELBO(potential, num_particles=0)
    assert not supports_guide(lambda x: None)
