"""NUTS as the reference posterior, with discrete labels summed out."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any

import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.ops.stats import split_gelman_rubin
from torch.distributions import biject_to

import guides
from ppl_models.data import check_data
from ppl_models.infer.init import init_strategy, initial_values
from ppl_models.infer.result import FitResult
from ppl_models.models import CollapsedLikelihood, LatentModel

__all__ = ["SAMPLE_STATS", "fit_mcmc"]

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
    seed: int | None = 0,
    progress: bool | None = None,
    columns: list[str] | None = None,
) -> FitResult:
    r"""Sample the posterior with the No-U-Turn Sampler (Hoffman & Gelman, 2014).

    Pyro's NUTS sums the model's enumerated labels out exactly, so the chain runs on the
    continuous globals of :math:`p(\theta \mid x) \propto p(\theta) \prod_n \sum_k
    p(x_n, z_n = k \mid \theta)`; a model with a ``marginal_model`` (the same density with
    the sum in closed form, :class:`~ppl_models.models.CollapsedLikelihood`) is sampled
    through that instead. Chains run one after the other,
    each from the same starting point (``init``) with its own seed; split R-hat over chains
    (computed before any relabelling) decides ``converged``.

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
        Trace the potential with TorchScript (faster on long runs, deprecated in torch).
    seed : int or None
    progress : bool or None
        Pyro's progress bar (default: when standard error is a terminal).
    columns : list of str, optional

    Returns
    -------
    FitResult
        ``draws``: ``(num_chains, num_samples, ...)`` per global site; ``params``: the
        posterior mean (in the unconstrained space for sites whose support is not convex,
        such as correlation Cholesky factors); ``info``: ``max_r_hat`` (``None`` with one
        chain: split R-hat across chains needs two), ``divergences``,
        ``step_size`` per chain and ``sample_stats``: name of :data:`SAMPLE_STATS` ->
        ``num_chains`` lists of ``num_samples`` numbers (what
        :func:`~ppl_models.diagnostics.to_inference_data` writes as ``sample_stats``).
    """
    for name, value in (
        ("num_samples", num_samples),
        ("warmup_steps", warmup_steps),
        ("num_chains", num_chains),
    ):
        if not isinstance(value, int) or value < (0 if name == "warmup_steps" else 1):
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
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
    nesting = model.max_plate_nesting if isinstance(model, LatentModel) else None
    chains: list[dict[str, torch.Tensor]] = []
    divergences: list[int] = []
    step_sizes: list[float] = []
    stats: dict[str, list[list[float]]] = {name: [] for name in SAMPLE_STATS}
    start = time.perf_counter()
    for chain in range(num_chains):
        pyro.set_rng_seed(seed + chain)
        kernel = _RecordingNUTS(
            model_fn,
            max_plate_nesting=nesting,
            jit_compile=jit_compile,
            ignore_jit_warnings=True,
            init_strategy=init_strategy(values),
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
        )
        mcmc = MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            num_chains=1,
            disable_progbar=not progress,
        )
        mcmc.run(data)
        chains.append({k: v.detach() for k, v in mcmc.get_samples().items()})
        diverging = mcmc.diagnostics().get("divergences", {})
        divergences.append(sum(len(v) for v in diverging.values()))
        step_sizes.append(float(kernel.step_size))
        for name in SAMPLE_STATS:
            stats[name].append(kernel.stats[name])
    fit_seconds = time.perf_counter() - start

    draws = {k: torch.stack([c[k] for c in chains]) for k in chains[0]}
    r_hat = _max_r_hat(draws) if num_chains > 1 else None
    supports = guides.global_latent_supports(model, data)
    params = {k: _posterior_centre(v, supports.get(k)) for k, v in draws.items()}
    info = {
        "num_chains": num_chains,
        "warmup_steps": warmup_steps,
        "max_r_hat": r_hat,
        "divergences": divergences,
        "step_size": step_sizes,
        "sample_stats": stats,
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
