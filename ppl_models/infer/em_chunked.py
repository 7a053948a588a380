r"""Out-of-core and distributed EM for a Gaussian mixture: sufficient statistics by blocks.

EM for a Gaussian mixture (Dempster, Laird & Rubin 1977; Bishop, PRML §9.2) needs from the
data, per iteration, only sums over observations. With the current means :math:`m_k` as the
reference point of component :math:`k` (which keeps the sums free of cancellation),

.. math::

    \ell = \sum_n \log p(x_n \mid \theta), \quad
    S^0_k = \sum_n r_{nk}, \quad
    S^1_k = \sum_n r_{nk} (x_n - m_k), \quad
    S^2_k = \sum_n r_{nk} (x_n - m_k)(x_n - m_k)^\top

(only the diagonal of :math:`S^2_k` for ``diag`` and ``spherical``), where
:math:`r_{nk}` is the exact E-step's responsibility. Each is a sum over rows, so it is
accumulated block by block (memory: one block and its ``(B, K)`` responsibilities), and over
processes by one ``all_reduce`` of all of them packed in one tensor per iteration
(:mod:`ppl_models.infer.distributed`; each rank holds its own rows). The M-step then is
scikit-learn's, with :math:`N_k = S^0_k + 10\epsilon`:

.. math::

    w_k = N_k / N, \quad \mu_k = (S^1_k + S^0_k m_k) / N_k, \quad
    \Sigma_k = \big(S^2_k - S^1_k \delta_k^\top - \delta_k S^{1\top}_k
        + S^0_k \delta_k \delta_k^\top\big) / N_k + \operatorname{diag}(\epsilon_d),
    \quad \delta_k = \mu_k - m_k .

Everything else follows :func:`ppl_models.infer.fit_em` step for step (centring on the data
mean, ``reg_covar`` relative to each feature's variance, the convergence test, restarts,
collapse retries, the final E-step), so the parameters and the number of iterations are the
in-memory fit's (to round-off; tested to 1e-8 in float64).

The start. ``init="kmeans"`` is :func:`ppl_models.infer.kmeans.kmeans` as the in-memory fit
runs it: its seeding and Lloyd iterations already work on a uniform subsample of
``400 K`` rows, drawn here by the same ``torch.randperm(N)`` from the same generator (a
permutation of the row numbers, 4 bytes per row, freed before the iterations: the only
allocation that grows with :math:`N`), read from disk (or gathered from every rank by one
``all_reduce``), and then every row's nearest centre gives the moments of the start in two
passes over the blocks. ``init`` may also be a dict of values, as for :func:`fit_em`;
``"kmeans++"`` and ``"random"`` need every row's responsibilities at once and are refused.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import torch

from ppl_models._shared.checks import check_float, check_int
from ppl_models.data import memmap_tensor
from ppl_models.infer import distributed as dist
from ppl_models.infer.chunks import DEFAULT_CHUNK_ROWS, iter_chunks, n_rows, take_rows
from ppl_models.infer.em import (
    _COLLAPSE_RETRIES,
    _MONOTONE_SLACK,
    _best_finite_run,
    _count_parameters,
    _fit_notes,
    _likelihood_criteria,
    _Run,
)
from ppl_models.infer.kmeans import SAMPLE_PER_CENTRE, kmeans
from ppl_models.infer.regularisation import (
    check_resolution_from_moments,
    collapse_causes,
    moment_covariances,
    reg_covar_from_variance,
)
from ppl_models.infer.result import FitResult
from ppl_models.models.gmm import GaussianMixture

__all__ = ["fit_em_chunked"]

@dataclass
class _Pass:
    """The data as blocks in the fit's coordinates (minus ``shift``), on this rank."""

    data: Any
    chunk_size: int
    dtype: torch.dtype
    shift: torch.Tensor | None = None
    distributed: bool = False

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (in place) when the fit is distributed."""
        return dist.all_reduce_sum(tensor) if self.distributed else tensor

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _, block in iter_chunks(self.data, self.chunk_size, self.dtype):
            yield block if self.shift is None else block - self.shift


# --------------------------------------------------------------------------- the data's moments
def _feature_moments(blocks: _Pass, n_local: int, d: int, dtype: torch.dtype):
    """Global ``N``, mean, (biased) variance and largest magnitude of each feature, in two
    passes (the variance centred on the mean: no cancellation)."""
    head = torch.zeros(1 + d, dtype=torch.float64)
    for block in blocks:
        head[1:] += block.sum(0, dtype=torch.float64)
    head[0] = n_local
    blocks.sum(head)
    n = int(head[0])
    mean = (head[1:] / n).to(dtype)
    spread = torch.zeros(d, dtype=torch.float64)
    largest = torch.zeros(d, dtype=torch.float64)
    for block in blocks:
        spread += (block - mean).square().sum(0, dtype=torch.float64)
        largest = torch.maximum(largest, block.abs().amax(0).to(torch.float64))
    blocks.sum(spread)
    if blocks.distributed:
        torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
    return n, mean, (spread / n).to(dtype), largest


def _given_dtype(data: Any) -> torch.dtype:
    """The torch dtype of the data as given (a tensor, or a NumPy array or memory map)."""
    if isinstance(data, torch.Tensor):
        return data.dtype
    return torch.from_numpy(np.empty(0, dtype=np.asarray(data[:0]).dtype)).dtype


def _offsets(n_local: int) -> tuple[int, int]:
    """This rank's first global row and the global number of rows."""
    counts = dist.all_gather_objects(n_local)
    rank, _ = dist.world()
    return sum(counts[:rank]), sum(counts)


def _subsample(blocks: _Pass, first: int, n_local: int, n: int, size: int,
               generator: torch.Generator, d: int) -> torch.Tensor:
    """Rows ``randperm(N)[:size]`` (every row, in order, when ``N <= size``) of the global
    data in the fit's coordinates, the same draw as :func:`~ppl_models.infer.kmeans.kmeans`."""
    if n <= size:
        index = np.arange(n)
    else:
        wide = torch.int64 if n > torch.iinfo(torch.int32).max else torch.int32
        perm = torch.randperm(n, generator=generator, dtype=wide)
        index = perm[:size].numpy().astype(np.int64)
        del perm
    mine = np.flatnonzero((index >= first) & (index < first + n_local))
    sample = torch.zeros(index.shape[0], d, dtype=blocks.dtype)
    if mine.size:
        rows = take_rows(blocks.data, index[mine] - first, blocks.dtype)
        sample[torch.from_numpy(mine)] = rows - blocks.shift
    return blocks.sum(sample)


def _nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.addmm(centres.square().sum(1), x, centres.T, alpha=-2.0).argmin(1)


def _kmeans_moments(blocks: _Pass, n: int, centre: torch.Tensor, sample: torch.Tensor,
                    k: int, generator: torch.Generator, reg: torch.Tensor):
    """:func:`~ppl_models.infer.kmeans.kmeans_moments` by blocks: k-means on the subsample,
    then every row's nearest centre, its clusters' weights, means and covariances."""
    size = sample.shape[0]
    fit = kmeans(sample, k, generator, sample_size=size)
    centres = fit.centres
    d = centres.shape[1]
    dtype = blocks.dtype
    first = torch.zeros(k, 1 + d, dtype=dtype)  # counts, sums
    for block in blocks:
        labels = _nearest(block - centre, centres)
        first[:, 0] += torch.bincount(labels, minlength=k).to(dtype)
        first[:, 1:].index_add_(0, labels, block)
    blocks.sum(first)
    counts = first[:, 0]
    overall = centre  # the mean of the data in these coordinates
    means = torch.where(counts.unsqueeze(1) > 0,
                        first[:, 1:] / counts.clamp(min=1).unsqueeze(1), overall)
    second = torch.zeros(k + 1, d, d, dtype=dtype)  # per cluster, and of all rows
    for block in blocks:
        labels = _nearest(block - centre, centres)
        for j in range(k):
            members = block[labels == j] - means[j]
            second[j] += members.T @ members
        whole = block - overall
        second[k] += whole.T @ whole
    blocks.sum(second)
    covs = torch.empty(k, d, d, dtype=dtype)
    for j in range(k):
        covs[j] = second[j] / counts[j] if counts[j] > 0 else second[k] / n
    covs = covs + reg * torch.eye(d, dtype=dtype)
    return counts / n, means, covs


# --------------------------------------------------------------------------- one EM iteration
def _statistics(model: GaussianMixture, blocks: _Pass, state, *, e_only: bool) -> torch.Tensor:
    """``[ll, S0 (K), S1 (K, D), S2 (K, D, D) or (K, D)]`` summed over this rank's blocks
    and then over ranks, in one tensor (one ``all_reduce``); ``[ll]`` only with ``e_only``."""
    locs = state["locs"]
    k, d = locs.shape
    full = model.covariance_type == "full"
    size = 1 if e_only else 1 + k + k * d + k * d * (d if full else 1)
    out = torch.zeros(size, dtype=blocks.dtype)
    if not e_only:
        s0 = out[1 : 1 + k]
        s1 = out[1 + k : 1 + k + k * d].view(k, d)
        s2 = out[1 + k + k * d :].view(k, d, d) if full else out[1 + k + k * d :].view(k, d)
    with torch.no_grad():
        for block in blocks:
            log_resp, log_norm = model.e_step(block, state)
            out[0] += log_norm.sum()
            if e_only:
                continue
            resp = log_resp.exp_()
            s0 += resp.sum(0)
            for j in range(k):
                centred = block - locs[j]
                weighted = centred * resp[:, j : j + 1]
                s1[j] += weighted.sum(0)
                s2[j] += weighted.T @ centred if full else (weighted * centred).sum(0)
    return blocks.sum(out)


def _m_step(model: GaussianMixture, stats: torch.Tensor, state, n: int,
            reg: torch.Tensor) -> dict[str, torch.Tensor]:
    """The closed-form M-step from the statistics of :func:`_statistics`."""
    locs = state["locs"]
    k, d = locs.shape
    full = model.covariance_type == "full"
    s0 = stats[1 : 1 + k]
    s1 = stats[1 + k : 1 + k + k * d].view(k, d)
    nk = s0 + 10 * torch.finfo(stats.dtype).eps
    means = (s1 + s0.unsqueeze(1) * locs) / nk.unsqueeze(1)
    delta = means - locs
    if full:
        s2 = stats[1 + k + k * d :].view(k, d, d)
        cross = s1.unsqueeze(-1) * delta.unsqueeze(-2)
        outer = s0[:, None, None] * delta.unsqueeze(-1) * delta.unsqueeze(-2)
        cov = (s2 - cross - cross.mT + outer) / nk[:, None, None]
        cov = cov + torch.diag_embed(reg.expand(k, d))
    else:
        s2 = stats[1 + k + k * d :].view(k, d)
        cov = (s2 - 2 * s1 * delta + s0.unsqueeze(1) * delta.square()) / nk.unsqueeze(1) + reg
        if model.covariance_type == "spherical":
            cov = cov.mean(1)
    return {"weights": nk / n, "locs": means, "covariances": cov}


# --------------------------------------------------------------------------- the loop
def _run(model, blocks: _Pass, state, n: int, max_iter: int, tol: float, reg: torch.Tensor,
         var: torch.Tensor) -> _Run:
    history: list[float] = []
    seconds: list[float] = []
    violations, converged, previous, n_iter = 0, False, -math.inf, 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (reported below)
        began = time.perf_counter()
        stats = _statistics(model, blocks, state, e_only=False)
        seconds.append(time.perf_counter() - began)
        value = float(stats[0]) / n
        history.append(value)
        if value < previous - _MONOTONE_SLACK * max(1.0, abs(previous)):
            violations += 1
        state = _m_step(model, stats, state, n, reg)
        if abs(value - previous) < tol:
            converged = True
            break
        previous = value
    final = float(_statistics(model, blocks, state, e_only=True)[0]) / n
    params = model.em_params(state)
    full = model.full_params(params, var.shape[0])
    notes = collapse_causes(moment_covariances(model, params), full["weights"], n, reg,
                            held=True, data_var=var)
    if not math.isfinite(final):
        notes.append("the objective is not finite at the returned parameters")
    return _Run(params, history, list(history), converged, n_iter, final,
                total_log_likelihood=final * n, notes=notes, monotone_violations=violations,
                iteration_seconds=seconds)


def _start(model, init, blocks: _Pass, n: int, centre, sample_fn, k: int, generator, reg):
    if isinstance(init, Mapping):
        params = {name: torch.as_tensor(v, dtype=blocks.dtype) for name, v in init.items()}
        if "covariances" in params:
            params = model.site_params_from_moments(
                params["weights"], params["locs"], params["covariances"]
            )
        missing = sorted(set(model.global_sites(centre.shape[0])) - set(params))
        if missing:
            raise ValueError(f"init is missing the global site(s) {missing}")
        return model.em_state(params)
    w, mu, cov = _kmeans_moments(blocks, n, centre, sample_fn(), k, generator, reg)
    return model.em_state(model.site_params_from_moments(w, mu, cov))


def _result_data(data) -> torch.Tensor:
    """The data for the result without a copy: a memory map's rows stay on disk."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, np.memmap):
        return memmap_tensor(data)
    return torch.from_numpy(np.asarray(data))


def fit_em_chunked(
    model: GaussianMixture,
    data: torch.Tensor | np.ndarray,
    *,
    chunk_size: int | None = None,
    distributed: bool = False,
    init: str | Mapping[str, Any] = "kmeans",
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    reg_covar_mode: str = "relative",
    objective: str = "auto",
    seed: int | None = 0,
    dtype: torch.dtype = torch.float64,
    columns: list[str] | None = None,
) -> FitResult:
    """Maximum-likelihood EM for a :class:`~ppl_models.models.GaussianMixture` by blocks of
    rows, and (``distributed=True``) across the ranks of a process group.

    :func:`ppl_models.infer.fit_em` calls this when given ``chunk_size``, ``distributed=True``
    or a memory-mapped array; the arguments it shares keep their meaning there.

    Parameters
    ----------
    model : GaussianMixture
        Fitted by maximum likelihood (no fixed sites, no priors: the closed-form M-step).
    data : Tensor or numpy.ndarray (N, D), e.g. ``numpy.load(path, mmap_mode="r")``
        This process's rows; with ``distributed=True``, each rank's own share of the data
        set (any sizes), whose union is fitted.
    chunk_size : int, optional
        Rows per block (default :data:`~ppl_models.infer.chunks.DEFAULT_CHUNK_ROWS`). Memory
        is about ``chunk_size * (K + 2) * D`` numbers beyond the data's own storage.
    distributed : bool
        Combine the ranks of the initialised :mod:`torch.distributed` process group: one
        ``all_reduce`` of the sufficient statistics per iteration. Every rank returns the
        same parameters.

    Returns
    -------
    FitResult
        As :func:`~ppl_models.infer.fit_em` (without standard errors); ``data`` is this rank's
        rows (a memory map's stay on disk), and ``info`` adds ``chunk_size``,
        ``world_size``, ``n_rows_global`` and ``iteration_seconds`` (each iteration's pass
        over the data and its ``all_reduce``).

    Raises
    ------
    ValueError
        Another model, a MAP objective, ``init="kmeans++"``/``"random"``, ``distributed``
        without a process group, or bad data (named block by block).
    """
    if not isinstance(model, GaussianMixture):
        raise ValueError(
            f"chunked and distributed EM handle a GaussianMixture; got {type(model).__name__} "
            "(load the data into memory and call fit_em without chunk_size)"
        )
    n_init = check_int(n_init, "n_init")
    max_iter = check_int(max_iter, "max_iter")
    tol = check_float(tol, "tol", minimum=0)
    reg_covar = check_float(reg_covar, "reg_covar", minimum=0)
    chunk_size = check_int(DEFAULT_CHUNK_ROWS if chunk_size is None else chunk_size,
                           "chunk_size")
    if distributed and not torch.distributed.is_initialized():
        raise ValueError("distributed=True needs an initialised torch.distributed process "
                         "group (launch with torchrun; see ppl_models.infer.distributed)")
    if objective not in ("auto", "ml", "map"):
        raise ValueError(f"objective must be 'auto', 'ml' or 'map'; got {objective!r}")
    if objective == "auto":
        objective = "map" if any(not isinstance(p, torch.Tensor)
                                 for p in model.priors.values()) else "ml"
    reason = model.closed_form_unavailable(objective)
    if reason is not None:
        raise ValueError(f"chunked EM needs the closed-form M-step, unavailable here: {reason}")
    if not isinstance(init, Mapping) and init != "kmeans":
        raise ValueError(f"chunked EM starts from init='kmeans' or a dict of values; got "
                         f"{init!r} (it needs every row's responsibilities at once)")
    n_local = n_rows(data)
    d = int(data.shape[1])

    generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    pyro.set_rng_seed(0 if seed is None else int(seed))
    start_time = time.perf_counter()
    blocks = _Pass(data, chunk_size, dtype, distributed=distributed)
    first, n = _offsets(n_local) if distributed else (0, n_local)
    if model.n_components > n:
        raise ValueError(f"n_components={model.n_components} is larger than the number of "
                         f"observations ({n})")
    n, shift, var, largest = _feature_moments(blocks, n_local, d, dtype)
    std = var.to(torch.float64).sqrt()
    given = _given_dtype(data)
    if given.is_floating_point and given != dtype:
        # as fit_em: float32 data near 1e8 are already rounded, whatever the fit's precision
        check_resolution_from_moments(std, largest, given, columns)
    check_resolution_from_moments(std, largest, dtype, columns)
    reg = reg_covar_from_variance(var, reg_covar, reg_covar_mode)
    blocks.shift = shift
    # The mean of the centred data (round-off), as kmeans centres its input again.
    centre = torch.zeros(d, dtype=torch.float64)
    for block in blocks:
        centre += block.sum(0, dtype=torch.float64)
    centre = (blocks.sum(centre) / n).to(dtype)
    k = model.n_components
    size = SAMPLE_PER_CENTRE * k

    def sample() -> torch.Tensor:
        return _subsample(blocks, first, n_local, n, size, generator, d) - centre

    runs: list[_Run] = []
    for restart in range(n_init):
        how = init if restart == 0 or not isinstance(init, Mapping) else "kmeans"
        if isinstance(how, Mapping) and "locs" in how:
            how = {**how, "locs": torch.as_tensor(how["locs"], dtype=dtype) - shift}
        attempts = 1 + (_COLLAPSE_RETRIES if how == "kmeans" else 0)
        best_attempt: _Run | None = None
        for _ in range(attempts):
            state = _start(model, how, blocks, n, centre, sample, k, generator, reg)
            run = _run(model, blocks, state, n, max_iter, tol, reg, var)
            if (best_attempt is None or run.objective > best_attempt.objective
                    or not math.isfinite(best_attempt.objective)):
                best_attempt = run
            if not any("collapsed" in note for note in run.notes):
                best_attempt = run
                break
        runs.append(best_attempt)
    fit_seconds = time.perf_counter() - start_time
    best = _best_finite_run(runs)
    best.params = {**best.params, "locs": best.params["locs"] + shift}
    # a mixture's parameter count needs the number of features only
    n_params = _count_parameters(model, best.params, torch.empty(0, d, dtype=dtype))
    notes = _fit_notes(best, max_iter, tol, "with reg_covar > 0 this can happen by round-off")
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    info = {
        "objective": objective,
        "m_step": "closed_form",
        **_likelihood_criteria(best.total_log_likelihood, n, n_params),
        "restart_objectives": [r.objective for r in runs],
        "monotone_violations": best.monotone_violations,
        "reg_covar": reg_covar,
        "reg_covar_mode": reg_covar_mode,
        "reg_covar_per_feature": reg.tolist(),
        "tol": tol,
        "warnings": notes,
        "chunk_size": chunk_size,
        "world_size": dist.world()[1] if distributed else 1,
        "n_rows_global": n,
        "iteration_seconds": best.iteration_seconds,
    }
    return FitResult(
        model=model,
        method="em",
        data=_result_data(data),
        params=best.params,
        draws=None,
        history={"objective": best.history, "log_likelihood": best.log_likelihood},
        converged=best.converged,
        n_iter=best.n_iter,
        seed=seed,
        fit_seconds=fit_seconds,
        info=info,
        columns=list(columns) if columns is not None else [],
    )
