"""NUTS as the reference posterior, with discrete labels summed out."""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import pyro
import torch
from pyro.distributions.util import scalar_like
from pyro.infer import MCMC, NUTS
from pyro.infer.mcmc.nuts import _TreeInfo
from pyro.infer.mcmc.util import initialize_model
from pyro.infer.util import is_validation_enabled
from pyro.ops.stats import split_gelman_rubin
from pyro.util import torch_isnan
from torch.distributions import biject_to

import guides
from ppl_models._shared.checks import check_choice
from ppl_models.data import check_data
from ppl_models.infer.compiled_potential import NUTSPotential
from ppl_models.infer.init import init_strategy, initial_values
from ppl_models.infer.mixture_potential import PRIOR_FAMILIES, mixture_potential
from ppl_models.infer.potential import CollapsedPotential
from ppl_models.infer.result import FitResult
from ppl_models.models import CollapsedLikelihood, CollapsedPosterior, LatentModel

__all__ = ["CHAIN_METHODS", "COMPILE_MIN_STEPS", "POTENTIALS", "SAMPLE_STATS", "fit_mcmc"]

#: Per-draw NUTS statistics kept in ``info["sample_stats"]``, with ArviZ's names.
SAMPLE_STATS = ("diverging", "energy", "tree_depth", "step_size", "acceptance_rate")


class _RecordingNUTS(NUTS):
    """NUTS that records, for every transition after warm-up, ArviZ's sample statistics:
    ``diverging`` (0/1), ``energy`` (the Hamiltonian at the start of the transition,
    :math:`U(z) + \\tfrac12 r^\\top M^{-1} r` with the fresh momentum, what
    ``az.bfmi`` needs), ``tree_depth`` (doublings), ``step_size`` and ``acceptance_rate``
    (mean Metropolis acceptance over the trajectory)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stats: dict[str, list[float]] = {name: [] for name in SAMPLE_STATS}
        self._energy: float | None = None
        self._depth = 0

    def _kinetic_energy(self, r_unscaled):
        energy = super()._kinetic_energy(r_unscaled)
        if self._energy is None:  # the first call of a transition: the fresh momentum
            self._energy = float(energy)
        return energy

    def _build_tree(self, z, r, z_grads, log_slice, direction, tree_depth, energy_current):
        self._depth = max(self._depth, tree_depth + 1)
        return super()._build_tree(
            z, r, z_grads, log_slice, direction, tree_depth, energy_current
        )

    def _build_basetree(self, z, r, z_grads, log_slice, direction, energy_current):
        """One leapfrog step as Pyro's, with a :class:`NUTSPotential`'s gradient taken directly
        (no autograd round trip: the same numbers, about half the overhead per step)."""
        if not isinstance(self.potential_fn, NUTSPotential):
            return super()._build_basetree(
                z, r, z_grads, log_slice, direction, energy_current
            )
        step_size = self.step_size if direction == 1 else -self.step_size
        z_new, r_new, z_grads, potential_energy = _leapfrog(
            self.potential_fn, self.mass_matrix_adapter.kinetic_grad, z, r, z_grads, step_size
        )
        # from here on as pyro.infer.mcmc.nuts.NUTS._build_basetree (Pyro 1.9)
        r_new_unscaled = self.mass_matrix_adapter.unscale(r_new)
        energy_new = potential_energy + self._kinetic_energy(r_new_unscaled)
        if torch_isnan(energy_new):
            energy_new = scalar_like(energy_new, float("inf"))
        sliced_energy = energy_new + log_slice
        diverging = sliced_energy > self._max_sliced_energy
        delta_energy = energy_new - energy_current
        accept_prob = (-delta_energy).exp().clamp(max=1.0)
        if self.use_multinomial_sampling:
            tree_weight = -sliced_energy
        else:
            tree_weight = scalar_like(sliced_energy, 1.0 if sliced_energy <= 0 else 0.0)
        return _TreeInfo(
            z_new, r_new, r_new_unscaled, z_grads, z_new, r_new, r_new_unscaled, z_grads,
            z_new, potential_energy, z_grads, r_new_unscaled, tree_weight, False, diverging,
            accept_prob, 1,
        )

    def sample(self, params):
        _, potential, _ = self._fetch_from_cache()
        potential = None if potential is None else float(potential)
        self._energy, self._depth = None, 0
        divergences, mean_accept = len(self._divergences), self._mean_accept_prob
        step_size = float(self.step_size)
        out = super().sample(params)
        n = self._t - self._warmup_steps
        if n >= 1:
            accept = mean_accept + n * (self._mean_accept_prob - mean_accept)
            kinetic = self._energy if self._energy is not None else math.nan
            self.stats["diverging"].append(float(len(self._divergences) > divergences))
            self.stats["energy"].append(
                (potential if potential is not None else math.nan) + kinetic
            )
            self.stats["tree_depth"].append(float(self._depth))
            self.stats["step_size"].append(step_size)
            self.stats["acceptance_rate"].append(float(min(max(accept, 0.0), 1.0)))
        return out


def _leapfrog(potential: NUTSPotential, kinetic_grad, z, r, z_grads, step_size):
    """Pyro's ``velocity_verlet`` (one step, same operations in the same order) with the
    potential's gradient from :meth:`NUTSPotential.grads`."""
    z, r = dict(z), dict(r)
    for name in r:
        r[name] = r[name] + 0.5 * step_size * (-z_grads[name])
    r_grads = kinetic_grad(r)
    for name in z:
        z[name] = z[name] + step_size * r_grads[name]
    z_grads, potential_energy = potential.grads(z)
    for name in r:
        r[name] = r[name] + 0.5 * step_size * (-z_grads[name])
    return z, r, z_grads, potential_energy


POTENTIALS = ("auto", "compiled", "closed_form", "trace")
#: ``potential="auto"`` compiles the closed form when each chain runs at least this many
#: transitions (warm-up + draws): compiling takes seconds (tens the first time on a machine),
#: each transition then costs several times less.
COMPILE_MIN_STEPS = 1000
CHAIN_METHODS = ("auto", "sequential", "parallel")


@dataclass(frozen=True)
class _ChainJob:
    """Everything one chain needs (read by forked workers from :data:`_JOBS`)."""

    model_fn: Callable
    model: Any
    data: torch.Tensor
    values: dict[str, torch.Tensor]
    potential_fn: Callable | None  # the closed form (built once, compiled before forking)
    nesting: int | None
    settings: dict[str, Any]
    seed: int
    validation: bool
    progress: bool


@dataclass(frozen=True)
class _ChainOut:
    draws: dict[str, torch.Tensor]
    divergences: int
    step_size: float
    stats: dict[str, list[float]]


def _run_chain(job: _ChainJob) -> _ChainOut:
    """One NUTS chain from ``job.seed``: the same draws in any process."""
    pyro.enable_validation(job.validation)
    pyro.set_rng_seed(job.seed)
    settings = job.settings
    nuts_options = {
        "target_accept_prob": settings["target_accept_prob"],
        "max_tree_depth": settings["max_tree_depth"],
    }
    strategy = init_strategy(job.values)
    closed_form = job.potential_fn is not None
    if closed_form:
        # Pyro's own starting point (same strategy, same RNG use), then the closed form.
        initial, _, _, _ = initialize_model(
            job.model_fn, (job.data,), max_plate_nesting=job.nesting, init_strategy=strategy
        )
        kernel = _RecordingNUTS(potential_fn=job.potential_fn, **nuts_options)
        generic = CollapsedPotential(job.model, job.data)
        transforms = {name: t.inv for name, t in generic.transforms.items()}
        mcmc_options = {"initial_params": initial, "transforms": transforms}
    else:
        kernel = _RecordingNUTS(
            job.model_fn,
            max_plate_nesting=job.nesting,
            jit_compile=settings["jit_compile"],
            ignore_jit_warnings=True,
            init_strategy=strategy,
            **nuts_options,
        )
        mcmc_options = {}
    mcmc = MCMC(
        kernel,
        num_samples=settings["num_samples"],
        warmup_steps=settings["warmup_steps"],
        num_chains=1,
        disable_progbar=not job.progress,
        **mcmc_options,
    )
    mcmc.run(*(() if closed_form else (job.data,)))
    diverging = mcmc.diagnostics().get("divergences", {})
    return _ChainOut(
        draws={k: v.detach() for k, v in mcmc.get_samples().items()},
        divergences=sum(len(v) for v in diverging.values()),
        step_size=float(kernel.step_size),
        stats={name: kernel.stats[name] for name in SAMPLE_STATS},
    )


#: The chains of the parallel run in progress: forked workers inherit them and receive only
#: an index, so a model need not be picklable (a user's prior may be a lambda).
_JOBS: list[_ChainJob] = []


def _run_forked(index: int) -> _ChainOut:
    torch.set_num_threads(1)
    return _run_chain(replace(_JOBS[index], progress=False))  # no interleaved progress bars


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _run_chains(jobs: list[_ChainJob], method: str) -> list[_ChainOut]:
    """Chains one after the other, or in forked worker processes (one thread each)."""
    workers = min(len(jobs), _available_cpus())
    parallel = method == "parallel" or (method == "auto" and workers > 1 and len(jobs) > 1)
    if not parallel or "fork" not in multiprocessing.get_all_start_methods():
        return [_run_chain(job) for job in jobs]
    _JOBS[:] = jobs
    try:
        with multiprocessing.get_context("fork").Pool(processes=max(workers, 1)) as pool:
            return pool.map(_run_forked, range(len(jobs)), chunksize=1)
    finally:
        _JOBS.clear()


def fit_mcmc(
    model: Any,
    data: torch.Tensor,
    *,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 2,
    init: str | Mapping[str, Any] | None = "em",
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    jit_compile: bool = False,
    potential: str = "auto",
    chain_method: str = "auto",
    seed: int | None = 0,
    progress: bool | None = None,
    columns: list[str] | None = None,
) -> FitResult:
    r"""Sample the posterior with the No-U-Turn Sampler (Hoffman & Gelman, 2014).

    Pyro's NUTS sums the model's enumerated labels out exactly, so the chain runs on the
    continuous globals of :math:`p(\theta \mid x) \propto p(\theta) \prod_n \sum_k
    p(x_n, z_n = k \mid \theta)`. A model whose posterior is in closed form
    (:class:`~ppl_models.models.CollapsedPosterior`, every built-in mixture) is sampled through
    the same potential energy computed without tracing the model (``potential``): for the
    built-in mixtures in plain tensor operations
    (:class:`~ppl_models.infer.mixture_potential.MixturePotential`), compiled with
    ``torch.compile`` for long runs, its gradient handed to the leapfrog step directly; else
    :class:`~ppl_models.infer.potential.CollapsedPotential`. Any other model with a
    ``marginal_model`` (:class:`~ppl_models.models.CollapsedLikelihood`) through a trace of
    that, and any model through a trace of ``model``. Each chain starts from the same point
    (``init``) with its own seed ``seed + chain``; split R-hat over chains (computed before
    any relabelling) decides ``converged``.

    Parameters
    ----------
    model, data
        As :func:`ppl_models.infer.fit_svi`.
    num_samples, warmup_steps, num_chains : int
        Draws kept per chain, adaptation steps per chain, chains.
    init : {"em", "kmeans++", "prior"}, dict or None
        Starting point; EM's optimum (the default) puts every chain in the same labelling and
        shortens warm-up.
    target_accept_prob, max_tree_depth : float, int
        NUTS settings.
    jit_compile : bool
        Trace Pyro's potential with TorchScript (deprecated in torch; implies
        ``potential="trace"``).
    potential : {"auto", "compiled", "closed_form", "trace"}
        ``"closed_form"``: the model's closed-form potential
        (:class:`~ppl_models.infer.mixture_potential.MixturePotential` in plain tensor
        operations for the built-in mixtures with priors of
        :data:`~ppl_models.infer.mixture_potential.PRIOR_FAMILIES`, else
        :class:`~ppl_models.infer.potential.CollapsedPotential`); ``"compiled"``: the plain-tensor
        form with its gradient through ``torch.compile`` (compiled once, before the chains
        start; a C++ compiler is needed); ``"trace"``: Pyro's potential from a trace of the
        model. ``"auto"``: ``"compiled"`` when the plain-tensor form exists and each chain runs
        at least :data:`COMPILE_MIN_STEPS` transitions, else ``"closed_form"`` when the model
        has one, else ``"trace"``.
    chain_method : {"auto", "sequential", "parallel"}
        ``"parallel"`` runs the chains in forked worker processes, one thread each (as many at
        once as there are CPUs); ``"auto"`` does so when there are several chains and CPUs.
        Every chain gives the same draws either way.
    seed : int or None
    progress : bool or None
        Pyro's progress bar (default: when standard error is a terminal; sequential chains
        only).
    columns : list of str, optional

    Returns
    -------
    FitResult
        ``draws``: ``(num_chains, num_samples, ...)`` per global site; ``params``: the
        posterior mean (in the unconstrained space for sites whose support is not convex,
        such as correlation Cholesky factors); ``info``: ``max_r_hat`` (``None`` with one
        chain: split R-hat across chains needs two), ``divergences``,
        ``step_size`` per chain, ``potential`` (``"compiled"``, ``"closed_form"`` or
        ``"trace"``: the one used), ``compile_seconds`` (wall time of compiling, 0 if none)
        and
        ``sample_stats``: name of :data:`SAMPLE_STATS` -> ``num_chains`` lists of
        ``num_samples`` numbers (what :func:`~ppl_models.diagnostics.to_inference_data`
        writes as ``sample_stats``).
    """
    for name, value in (
        ("num_samples", num_samples),
        ("warmup_steps", warmup_steps),
        ("num_chains", num_chains),
    ):
        if not isinstance(value, int) or value < (0 if name == "warmup_steps" else 1):
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    check_choice(potential, "potential", POTENTIALS)
    check_choice(chain_method, "chain_method", CHAIN_METHODS)
    if potential in ("compiled", "closed_form") and not isinstance(model, CollapsedPosterior):
        raise ValueError(
            f"potential='{potential}' needs a model with a closed-form posterior "
            f"(CollapsedPosterior); {type(model).__name__} has none: use potential='auto'"
        )
    if potential in ("compiled", "closed_form") and jit_compile:
        raise ValueError("jit_compile=True traces Pyro's potential: use potential='trace'")
    data = model.validate(data) if isinstance(model, LatentModel) else check_data(data)
    seed = 0 if seed is None else int(seed)
    if progress is None:
        progress = sys.stderr.isatty()
    values = initial_values(model, data, init, seed)
    # A collapsed model (labels summed out in closed form) targets the same posterior faster.
    if isinstance(model, CollapsedLikelihood):
        model_fn = model.marginal_model
    else:
        model_fn = guides.model_callable(model)
    start = time.perf_counter()
    kind, potential_fn = _closed_form_potential(
        model, data, potential, jit_compile, warmup_steps + num_samples
    )
    compile_seconds = time.perf_counter() - start if kind == "compiled" else 0.0
    settings = {
        "num_samples": num_samples,
        "warmup_steps": warmup_steps,
        "target_accept_prob": target_accept_prob,
        "max_tree_depth": max_tree_depth,
        "jit_compile": jit_compile,
    }
    jobs = [
        _ChainJob(
            model_fn=model_fn,
            model=model,
            data=data,
            values=values,
            potential_fn=potential_fn,
            nesting=model.max_plate_nesting if isinstance(model, LatentModel) else None,
            settings=settings,
            seed=seed + chain,
            validation=is_validation_enabled(),
            progress=progress,
        )
        for chain in range(num_chains)
    ]
    outs = _run_chains(jobs, chain_method)
    fit_seconds = time.perf_counter() - start  # compilation included

    draws = {k: torch.stack([out.draws[k] for out in outs]) for k in outs[0].draws}
    r_hat = _max_r_hat(draws) if num_chains > 1 else None
    supports = guides.global_latent_supports(model, data)
    params = {k: _posterior_centre(v, supports.get(k)) for k, v in draws.items()}
    info = {
        "num_chains": num_chains,
        "warmup_steps": warmup_steps,
        "max_r_hat": r_hat,
        "divergences": [out.divergences for out in outs],
        "step_size": [out.step_size for out in outs],
        "sample_stats": {name: [out.stats[name] for out in outs] for name in SAMPLE_STATS},
        "potential": kind,
        "compile_seconds": compile_seconds,
        "init": init if isinstance(init, str) or init is None else "values",
    }
    return FitResult(
        model=model,
        method="nuts",
        data=data,
        params=params,
        draws=draws,
        history={},
        converged=bool(num_chains > 1 and r_hat < 1.05),
        n_iter=num_samples,
        seed=seed,
        fit_seconds=fit_seconds,
        info=info,
        columns=list(columns) if columns is not None else [],
    )


def _closed_form_potential(
    model: Any, data: torch.Tensor, potential: str, jit_compile: bool, steps: int
) -> tuple[str, Callable | None]:
    """The potential kind chosen (see :func:`fit_mcmc`) and its ``potential_fn`` (``None`` for
    Pyro's trace); a compiled one is compiled here, once, before any chain starts."""
    if potential == "trace" or jit_compile or not isinstance(model, CollapsedPosterior):
        return "trace", None
    generic = CollapsedPotential(model, data)
    fast = mixture_potential(generic)
    if potential == "compiled" and fast is None:
        raise ValueError(
            f"potential='compiled' needs a built-in mixture with priors of the families "
            f"{sorted(PRIOR_FAMILIES)}; {type(model).__name__} with these priors has none: "
            f"use potential='closed_form'"
        )
    if fast is None:
        return "closed_form", generic
    compile = potential == "compiled" or (potential == "auto" and steps >= COMPILE_MIN_STEPS)
    if not compile:
        return "closed_form", NUTSPotential(fast)
    potential_fn = NUTSPotential(fast, compile=True)
    try:
        potential_fn.warm_up(fast.unpack(torch.zeros(fast.size, dtype=data.dtype)))
    except Exception as error:  # e.g. no C++ compiler for inductor: "auto" runs uncompiled
        if potential == "compiled":
            raise
        warnings.warn(
            f"torch.compile of the closed-form potential failed ({type(error).__name__}: "
            f"{str(error)[:200]}); sampling with the uncompiled closed form",
            RuntimeWarning,
            stacklevel=3,
        )
        return "closed_form", NUTSPotential(fast)
    return "compiled", potential_fn


def _posterior_centre(draws: torch.Tensor, support) -> torch.Tensor:
    """Posterior mean over (chain, draw); taken in unconstrained space if the mean leaves the
    support (e.g. an average of correlation Cholesky factors is not one)."""
    flat = draws.reshape(-1, *draws.shape[2:])
    mean = flat.mean(0)
    if support is None or bool(support.check(mean).all()):
        return mean
    transform = biject_to(support)
    return transform(transform.inv(flat).mean(0))


def _max_r_hat(draws: Mapping[str, torch.Tensor]) -> float:
    """Largest split R-hat over every scalar of every site, ignoring constant entries."""
    worst = 1.0
    for value in draws.values():
        flat = value.reshape(value.shape[0], value.shape[1], -1)
        varying = flat.std(dim=(0, 1)) > 0
        if varying.any():
            r_hat = split_gelman_rubin(flat[..., varying], chain_dim=0, sample_dim=1)
            worst = max(worst, float(r_hat.max()))
    return worst
