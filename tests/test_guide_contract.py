"""One contract for every (model, guide kind) pair of the collection.

Driven by two lists: :data:`CASES` (one line per model: how to make it and its data, the latent
sites it must show with their shapes and supports, the kinds it must refuse, and fit options)
and :data:`GUIDES` (every kind of ``guides.KINDS`` with its defaults, plus ``amortized`` over
every global kind). A new model joins by one line in :data:`CASES`; a new kind joins the
registry and is tested against every model without a line here.

For each applicable pair a few SVI steps through ``fit_svi`` give finite ELBOs, the guide covers
exactly the expected latents (enumerated labels hidden), draws and point estimates have each
site's shape and support, and the mixtures' results convert to ArviZ data. Each refused pair
fails with the error listing the kinds that apply, as stated in the case line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

import guides
from ppl_models.data import load
from ppl_models.diagnostics import to_inference_data
from ppl_models.infer import fit_svi
from ppl_models.models import GaussianMixture, StudentTMixture

NUM_STEPS = 5
NUM_DRAWS = 30


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on these tiny tensors torch's thread pool costs far more than it
    gives (``tril`` of a 2x2 with its backward: ~1 ms with 2 threads, ~16 us with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class PPCA:
    r"""Probabilistic PCA, a test model with continuous per-observation latents.

    .. math::

        W \sim \mathcal N(0, 1)^{D \times Q}, \quad \sigma \sim \mathrm{LogNormal}(0, 1), \quad
        z_n \sim \mathcal N(0, I_Q), \quad x_n \mid z_n \sim \mathcal N(W z_n, \sigma^2 I_D)

    (Tipping & Bishop, 1999, "Probabilistic principal component analysis", JRSS B). Given
    :math:`W` and :math:`\sigma`, :math:`z_n \mid x_n \sim \mathcal N(M^{-1} W^\top x_n,
    \sigma^2 M^{-1})` with :math:`M = W^\top W + \sigma^2 I`. Passing ``loadings`` / ``noise``
    fixes those sites; ``subsample_size`` subsamples the plate of observations, and a call
    ``model(batch, n_obs=N, subsample=rows)`` fits a minibatch given by its row indices (the
    declared :meth:`create_plates` tells guides so).
    """

    local_plate = "obs"
    local_sites = ("z",)
    enumerated_sites = ()
    max_plate_nesting = 1
    name = "ppca"

    def __init__(
        self,
        latent_dim: int = 1,
        *,
        loadings: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        subsample_size: int | None = None,
    ) -> None:
        self.latent_dim = latent_dim
        self.loadings = loadings
        self.noise = noise
        self.subsample_size = subsample_size

    def create_plates(
        self, data: torch.Tensor, *, n_obs: int | None = None, subsample=None
    ) -> pyro.plate:
        """The plate of observations: ``data`` is the minibatch ``subsample`` of ``n_obs``
        rows when those are given, else all rows (subsampled if ``subsample_size``)."""
        if subsample is not None:
            return pyro.plate(self.local_plate, n_obs, subsample=subsample)
        return pyro.plate(self.local_plate, data.shape[0], subsample_size=self.subsample_size)

    def model(
        self, data: torch.Tensor, *, n_obs: int | None = None, subsample=None
    ) -> None:
        d = data.shape[1]
        w = self.loadings
        if w is None:
            prior = dist.Normal(torch.zeros(d, self.latent_dim), 1.0).to_event(2)
            w = pyro.sample("loadings", prior)
        sigma = self.noise
        if sigma is None:
            sigma = pyro.sample("noise", dist.LogNormal(torch.tensor(0.0), 1.0))
        with self.create_plates(data, n_obs=n_obs, subsample=subsample) as index:
            rows = data if subsample is not None else data[index]
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T, sigma).to_event(1), obs=rows)

    __call__ = model


def ppca_data(n: int = 40, seed: int = 0) -> torch.Tensor:
    """``n`` rows of 3 features from a one-factor PPCA."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.tensor([[2.0], [1.0], [-1.0]])
    return torch.randn(n, 1, generator=gen) @ w.T + 0.5 * torch.randn(n, 3, generator=gen)


def faithful() -> torch.Tensor:
    # float32 as before load() read float64: Pyro's autoregressive flow networks are float32.
    x, _ = load("faithful", dtype=torch.float32)
    return x[::3]  # 91 rows: the same two clusters, a third of the cost


Sites = dict[str, tuple[tuple[int, ...], constraints.Constraint]]


def mixture_sites(model: Any, data: torch.Tensor) -> Sites:
    """A mixture's global latents as its declarations state them (shapes, prior domains)."""
    d = data.shape[1]
    shapes, specs = model.site_shapes(d), model.site_specs()
    return {name: (shapes[name], specs[name].domain) for name in model.global_sites(d)}


def ppca_sites(model: PPCA, data: torch.Tensor) -> Sites:
    d = data.shape[1]
    return {
        "loadings": ((d, model.latent_dim), constraints.real),
        "noise": ((), constraints.positive),
    }


@dataclass(frozen=True)
class Case:
    """One model of the collection in the contract.

    ``sites``: the expected global latents; ``local``: the expected continuous
    per-observation latents; ``refused``: kinds that must refuse it; ``fit``: options of
    ``fit_svi``; ``per_kind``: option overrides for one kind; ``arviz``: whether the result
    converts to ``InferenceData``.
    """

    name: str
    make: Callable[[], Any]
    data: Callable[[], torch.Tensor]
    sites: Callable[[Any, torch.Tensor], Sites]
    local: Callable[[Any, torch.Tensor], Sites] = lambda model, data: {}
    refused: frozenset[str] = frozenset()
    fit: Mapping[str, Any] = field(default_factory=dict)
    per_kind: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    arviz: bool = True


NO_AMORTISING = frozenset({"amortized"})
# The Laplace approximation needs a mode: the mixtures start from EM's optimum, the PPCA's joint
# MAP over (W, sigma, z_1..z_N) takes a few hundred deterministic steps.
MIXTURE = {"per_kind": {"laplace": {"init": "em"}}}

CASES = [
    Case("gmm_full", lambda: GaussianMixture(2, "full"), faithful, mixture_sites,
         refused=NO_AMORTISING, **MIXTURE),
    # K=3 on two clusters: the redundant component leaves EM's optimum short of a posterior
    # mode (an indefinite Hessian, refused by the Laplace guide); MAP steps reach one.
    Case("gmm_diag", lambda: GaussianMixture(3, "diag"), faithful, mixture_sites,
         refused=NO_AMORTISING, per_kind={"laplace": {"init": "em", "num_steps": 200}}),
    Case("gmm_spherical", lambda: GaussianMixture(2, "spherical"), faithful, mixture_sites,
         refused=NO_AMORTISING, **MIXTURE),
    Case("student_t_full", lambda: StudentTMixture(2, "full"), faithful, mixture_sites,
         refused=NO_AMORTISING, **MIXTURE),
    Case("student_t_diag", lambda: StudentTMixture(2, "diag", df=3.0), faithful, mixture_sites,
         refused=NO_AMORTISING, **MIXTURE),
    Case("ppca", lambda: PPCA(1), ppca_data, ppca_sites,
         local=lambda m, x: {"z": ((x.shape[0], m.latent_dim), constraints.real)},
         fit={"init": "prior"}, per_kind={"laplace": {"num_steps": 400, "lr": 0.05}},
         arviz=False),
]

GUIDES: list[tuple[str, dict[str, Any]]] = [(kind, {}) for kind in guides.KINDS] + [
    ("amortized", {"global_kind": kind}) for kind in guides.GLOBAL_KINDS if kind != "mean_field"
]


def _pairs():
    for case in CASES:
        for kind, options in GUIDES:
            label = kind + "".join(f"-{v}" for v in options.values())
            mark = "refused" if kind in case.refused else "fits"
            yield pytest.param(case, kind, options, id=f"{case.name}-{label}-{mark}")


def _check_values(values: Mapping[str, torch.Tensor], expected: Sites, batch: tuple[int, ...]):
    assert set(values) == set(expected)
    for name, (shape, support) in expected.items():
        value = values[name]
        assert tuple(value.shape) == (*batch, *shape), name
        assert bool(torch.isfinite(value).all()), name
        assert bool(support.check(value).all()), f"{name} left its support {support}"


@pytest.mark.parametrize(("case", "kind", "options"), list(_pairs()))
def test_guide_contract(case: Case, kind: str, options: dict[str, Any]):
    model, data = case.make(), case.data()
    fit = {"num_steps": NUM_STEPS, "num_draws": NUM_DRAWS, "progress": False, "lr": 0.01}
    fit.update(case.fit)
    fit.update(case.per_kind.get(kind, {}))
    if kind in case.refused:
        applicable = ", ".join(sorted(set(guides.KINDS) - case.refused))
        with pytest.raises(ValueError, match=rf"cannot serve .*; kinds that apply: {applicable}$"):
            fit_svi(model, data, guide=kind, guide_options=options, **fit)
        return

    result = fit_svi(model, data, guide=kind, guide_options=options, **fit)

    assert len(result.history["elbo"]) == fit["num_steps"]
    assert all(math.isfinite(v) for v in result.history["elbo"])
    expected = case.sites(model, data)
    _check_values(result.params, expected, ())
    if kind == "map":
        assert result.draws is None
    else:
        _check_values(result.draws, expected, (1, NUM_DRAWS))
    # The guide covers the global and continuous local latents, never an enumerated label.
    trace = poutine.trace(result.guide).get_trace(data)
    covered = {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary")
    }
    _check_values(covered, {**expected, **case.local(model, data)}, ())
    if case.arviz:
        idata = to_inference_data(result, num_predictive=2)
        draws = 1 if result.draws is None else NUM_DRAWS
        for name, (shape, _) in expected.items():
            posterior = idata.posterior[name]
            if f"{name}_entry" in posterior.dims:  # entries that never vary are left out
                assert posterior.shape[:3] == (1, draws, shape[0])
                assert 0 < posterior.shape[3] < int(torch.tensor(shape[1:]).prod())
            else:
                assert posterior.shape == (1, draws, *shape)
        log_lik = idata.log_likelihood[model.observed_site]
        assert log_lik.shape == (1, draws, data.shape[0])
        assert bool(torch.isfinite(torch.as_tensor(log_lik.values)).all())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_applicable_kinds_are_those_the_case_states(case: Case):
    assert guides.applicable_kinds(case.make()) == sorted(set(guides.KINDS) - case.refused)
