r"""Memory a fit will need, estimated before it starts, and the limit it must stay under.

A run that cannot fit in memory should end at once with one line giving the estimate and the
limit, not after minutes with a traceback from the allocator (``fit vae --prior gmvae
--components 10000`` asks for a 41 GB tensor). The estimate counts the largest tensors a fit
allocates, from the sizes alone (``N`` rows, ``D`` features, ``K`` components, the networks'
widths), in bytes:

=================================== ===========================================================
mixture, EM (:func:`mixture_memory`) responsibilities and log densities ``N x K``, the E-step's
                                    whitened differences ``N x K x D`` (the exact path), the
                                    expanded features ``N x (D(D+1)/2 + D + 1)`` of the fast
                                    path, covariances and their factors ``K x D x D``; without
                                    a closed-form M-step (Student-t), the generic M-step's
                                    ``K x N x D`` graph with its gradients
mixture, SVI / NUTS                 the enumerated log densities ``K x N`` and ``K x N x D``
                                    with their gradients, the draws' log-likelihood
                                    ``draws x N``
standard errors                     the twice-differentiable graph of the log-likelihood
                                    (a few ``N x K x D``) and the information matrix ``P x P``
ArviZ output                        the predictive and prior-predictive data sets
                                    ``(predictive + prior) x N x D``, twice (whole and per
                                    feature)
VAE family (:func:`vae_memory`)     the networks with their gradients and Adam's two moments;
                                    per minibatch of ``B`` rows the activations (twice, for
                                    the backward pass); a GMVAE with ``C`` labels runs its
                                    encoder head on ``(C, B, H + C)`` and its decoder on
                                    ``(C, B, D)``; a mixture or VampPrior prior evaluates
                                    ``B x C`` densities; the importance-weighted evaluation
                                    adds ``S x B x C (x L)`` for ``S`` particles per batch
=================================== ===========================================================

Phases that run one after the other (fitting, standard errors, evaluation) do not add up: the
estimate is what stays allocated (data, networks) plus the largest phase. It is an estimate
within a small factor, not a bound: Python, PyTorch's allocator and the libraries' own
buffers come on top (a few hundred MB).

The limit (:func:`memory_limit`) is ``PPL_MODELS_MEMORY_LIMIT`` when set (bytes, or with a
unit: ``500M``, ``8G``, ``2GiB``; ``off`` disables the check), else
:data:`AVAILABLE_FRACTION` of the memory available now (``MemAvailable`` of
``/proc/meminfo``, else ``os.sysconf``'s available pages).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ppl_models.models import (
    GMVAE,
    VAE,
    ClosedFormEM,
    FiniteMixture,
    MixtureOfGaussiansPrior,
    VampPrior,
)

__all__ = [
    "AVAILABLE_FRACTION",
    "ENV_VAR",
    "MemoryEstimate",
    "MemoryLimitError",
    "available_memory",
    "check_memory",
    "format_bytes",
    "memory_limit",
    "mixture_memory",
    "parse_bytes",
    "standard_errors_seconds",
    "vae_memory",
]

#: Environment variable overriding the limit (bytes, ``8G``, ``2GiB``, ... or ``off``).
ENV_VAR = "PPL_MODELS_MEMORY_LIMIT"
#: Share of the available memory a run may plan to use when ``ENV_VAR`` is not set.
AVAILABLE_FRACTION = 0.75

#: Draws simulated by ``to_inference_data``'s defaults (posterior predictive + prior).
_ARVIZ_DATA_SETS = 200 + 100
#: Factor for a graph that is differentiated twice (saved tensors of the forward pass, the
#: first gradient's graph and its own saved tensors).
_DOUBLE_BACKWARD = 6
#: Factor for a training step: the forward activations are saved for the backward pass and
#: each gets a gradient of its size.
_TRAINING = 2

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


class MemoryLimitError(ValueError):
    """A run whose estimated memory exceeds the limit (one line: estimate, limit, fix)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs: what stays allocated, plus the largest of its phases.

    Attributes
    ----------
    what : str
        The run, in words (``"EM of a 2-component gmm on 272 x 2"``).
    resident : dict of str to int
        Allocations that live through the whole run (data, networks, optimiser state).
    phases : dict of str to dict of str to int
        Per phase (``"fit"``, ``"standard errors"``, ``"evaluation"``, ...), its main
        allocations; phases run one after the other.
    """

    what: str
    resident: dict[str, int] = field(default_factory=dict)
    phases: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def peak_phase(self) -> str | None:
        """The phase with the most bytes (``None`` without phases)."""
        if not self.phases:
            return None
        return max(self.phases, key=lambda name: sum(self.phases[name].values()))

    @property
    def total(self) -> int:
        """Resident bytes plus the largest phase's."""
        peak = self.peak_phase
        return sum(self.resident.values()) + (sum(self.phases[peak].values()) if peak else 0)

    def largest(self) -> tuple[str, int]:
        """The single largest allocation counted in :attr:`total`, as ``(name, bytes)``."""
        parts = dict(self.resident)
        if self.peak_phase is not None:
            parts.update(self.phases[self.peak_phase])
        name = max(parts, key=parts.__getitem__)
        return name, parts[name]


def format_bytes(n: float) -> str:
    """``n`` bytes in words: ``"41.0 GB"``, ``"512.0 MB"`` (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def parse_bytes(text: str) -> int | None:
    """A memory size: ``"123456"``, ``"500M"``, ``"8G"``, ``"8 GB"``, ``"2GiB"`` (k/M/G/T are
    powers of 1000, KiB/MiB/GiB/TiB of 1024); ``"off"``/``"none"`` -> ``None`` (no limit).

    Raises
    ------
    ValueError
        For anything else, or a size that is not positive.
    """
    cleaned = str(text).strip()
    if cleaned.lower() in ("off", "none"):
        return None
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)", cleaned)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"{ENV_VAR} must be a size such as 8G, 500M, 2GiB or a number of bytes, or 'off'; "
            f"got {text!r}"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if not value >= 1 or not math.isfinite(value):
        raise ValueError(f"{ENV_VAR} must be a positive size; got {text!r}")
    return int(value)


def available_memory(meminfo: str | os.PathLike[str] = "/proc/meminfo") -> int:
    """Bytes of memory available now: ``MemAvailable`` of ``meminfo`` (Linux), else
    ``os.sysconf``'s available pages times the page size.

    Raises
    ------
    ValueError
        When neither source tells.
    """
    try:
        text = Path(meminfo).read_text()
    except OSError:
        text = ""
    match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, flags=re.MULTILINE)
    if match:
        return int(match.group(1)) * 1024
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        raise ValueError(
            f"cannot tell how much memory is available; set {ENV_VAR} (e.g. 8G, or off)"
        ) from None


def memory_limit(environ: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """The memory limit in bytes (``None``: no limit) and where it comes from, in words.

    ``environ[ENV_VAR]`` when set (see :func:`parse_bytes`), else :data:`AVAILABLE_FRACTION`
    of :func:`available_memory`.
    """
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_VAR)
    if text is not None and text.strip():
        return parse_bytes(text), f"set by {ENV_VAR}"
    available = available_memory()
    limit = int(AVAILABLE_FRACTION * available)
    return limit, (
        f"{AVAILABLE_FRACTION:.0%} of the {format_bytes(available)} available; set {ENV_VAR} "
        "to change it"
    )


def check_memory(estimate: MemoryEstimate, limit: int | None = None, source: str = "") -> None:
    """Refuse a run whose estimate exceeds the limit (:func:`memory_limit` by default).

    Raises
    ------
    MemoryLimitError
        One line: the run, the estimate, its largest allocation and the limit.
    """
    if limit is None and not source:
        limit, source = memory_limit()
    if limit is None or estimate.total <= limit:
        return
    name, size = estimate.largest()
    raise MemoryLimitError(
        f"{estimate.what} needs about {format_bytes(estimate.total)} of memory (largest: "
        f"{name}, {format_bytes(size)}) but the limit is {format_bytes(limit)} ({source})"
    )


# ------------------------------------------------------------------------------ mixtures
def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")


def mixture_memory(
    model: FiniteMixture,
    n: int,
    d: int,
    *,
    method: str = "em",
    itemsize: int = 8,
    num_draws: int = 1000,
    standard_errors: bool = False,
    arviz: bool = True,
) -> MemoryEstimate:
    """Estimated memory of fitting a finite mixture to ``n x d`` data (see the module table).

    Parameters
    ----------
    model : FiniteMixture
        Gives ``K`` and the covariance type (the number of free parameters).
    n, d : int
        Rows and features.
    method : {"em", "svi", "nuts"}
    itemsize : int
        Bytes per number of the fit (8: float64).
    num_draws : int
        Posterior draws kept by SVI / NUTS (their log-likelihood is ``draws x N``).
    standard_errors : bool
        Add the phase of the observed information (EM only).
    arviz : bool
        Add the phase of ``to_inference_data`` with its default simulated data sets.

    Returns
    -------
    MemoryEstimate
    """
    if not isinstance(model, FiniteMixture):
        raise ValueError(f"mixture_memory needs a FiniteMixture; got {type(model).__name__}")
    _check_sizes(n=n, d=d, itemsize=itemsize, num_draws=num_draws)
    k = model.n_components
    b = itemsize
    what = (f"{method.upper()} of a {k}-component {model.name} ({model.covariance_type}) on "
            f"{n} x {d} data")
    n_quad = d * (d + 1) // 2 if model.covariance_type == "full" else d
    covariances = {"covariances and their factors (K x D x D, 3 copies)": 3 * k * d * d * b}
    phases: dict[str, dict[str, int]] = {}
    if method == "em":
        phases["fit"] = {
            "responsibilities (N x K)": n * k * b,
            "log densities (N x K)": n * k * b,
            "E-step differences (N x K x D)": n * k * d * b,
            "expanded features (N x (D(D+1)/2 + D + 1))":
                min(n * (n_quad + d + 1), 2 * n * k * d) * b,
            **covariances,
        }
        if not isinstance(model, ClosedFormEM):  # Pyro's enumeration and L-BFGS
            phases["fit"]["generic M-step graph (K x N x D, twice, with gradients)"] = (
                _TRAINING * 2 * n * k * d * b)
        if standard_errors:
            p = _free_parameters(model, d)
            phases["standard errors"] = {
                "differentiated graph (N x K x D, several)": _DOUBLE_BACKWARD * n * k * d * b,
                "information matrix and Jacobian (P x P)": 3 * p * p * b,
            }
    elif method in ("svi", "nuts"):
        phases["fit"] = {
            "enumerated log densities with gradients (K x N)": _TRAINING * 2 * n * k * b,
            "component differences with gradients (K x N x D)": _TRAINING * n * k * d * b,
            **covariances,
        }
        phases["draws"] = {"log-likelihood of the draws (draws x N)": num_draws * n * 8}
    else:
        raise ValueError(f"method must be 'em', 'svi' or 'nuts'; got {method!r}")
    if arviz:
        phases["ArviZ output"] = {
            "simulated data sets (300 x N x D, twice)": 2 * _ARVIZ_DATA_SETS * n * d * 8,
        }
    return MemoryEstimate(what, {"data (N x D)": n * d * b}, phases)


def _free_parameters(model: FiniteMixture, d: int) -> int:
    """Unconstrained parameters: K - 1 weights, K D locations and the covariances'."""
    k = model.n_components
    covariance = {"full": d * (d + 1) // 2, "diag": d, "spherical": 1}.get(
        model.covariance_type, d * (d + 1) // 2)
    return (k - 1) + k * d + k * covariance


# ------------------------------------------------------------------------------ VAEs
def vae_memory(
    model: VAE,
    n_train: int,
    *,
    batch_size: int,
    n_test: int = 1,
    particles: int = 1000,
    eval_batch: int = 1000,
    iw_batch: int = 100,
    particle_batch: int = 500,
) -> MemoryEstimate:
    r"""Estimated memory of training and scoring a VAE (see the module table).

    Parameters
    ----------
    model : VAE
        A :class:`~ppl_models.models.VAE` (any prior) or :class:`~ppl_models.models.GMVAE`,
        built (its networks are counted parameter by parameter).
    n_train, n_test : int
        Rows of the training and test data.
    batch_size : int
        Training minibatch ``B``.
    particles : int
        Importance samples of the test log-likelihood.
    eval_batch, iw_batch, particle_batch : int
        Batches of :func:`~ppl_models.infer.elbo_terms` (rows) and of
        :func:`~ppl_models.infer.log_marginal_likelihood` (rows, particles).

    Returns
    -------
    MemoryEstimate
        In float32 (4 bytes a number), the mixture densities in float64.
    """
    if not isinstance(model, VAE):
        raise ValueError(f"vae_memory needs a VAE; got {type(model).__name__}")
    _check_sizes(n_train=n_train, n_test=n_test, batch_size=batch_size, particles=particles,
                 eval_batch=eval_batch, iw_batch=iw_batch, particle_batch=particle_batch)
    b = 4
    d, latent = model.input_dim, model.latent_dim
    hidden = list(model.hidden) or [d]
    h_sum, h_top = sum(hidden), hidden[-1]
    weights = sum(p.numel() for p in model.parameters())
    resident = {
        "training and test data": (n_train + n_test) * d * b,
        "networks, gradients and Adam moments (4 copies)": 4 * weights * b,
    }
    batch = min(batch_size, n_train)
    rows, iw_rows = min(eval_batch, n_test), min(iw_batch, n_test)
    samples = min(particle_batch, particles)

    def plain(m: int) -> int:  # encoder and decoder on m rows (or m codes)
        return m * (2 * h_sum + 2 * latent + 2 * d) * b

    phases: dict[str, dict[str, int]] = {
        "training": {"activations of a minibatch, with gradients": _TRAINING * plain(batch)},
        "evaluation": {"activations of an evaluation batch": plain(rows)},
        "importance-weighted evaluation": {
            "decoder on the particles (S x B)": samples * iw_rows * (h_sum + 2 * d) * b,
        },
    }
    if isinstance(model, GMVAE):
        c = model.n_clusters
        if model.conditional_encoder:
            def per_label(m: int) -> dict[str, int]:
                return {
                    f"GMVAE encoder head input ({c} labels x {m} rows x {h_top + c})":
                        c * m * (h_top + c) * b,
                    f"GMVAE decoder on every label ({c} x {m} x {d}, with hidden layers)":
                        c * m * (h_sum + 2 * d + 4 * latent) * b,
                }
            phases["training"].update(
                {name: _TRAINING * size for name, size in per_label(batch).items()})
            phases["evaluation"].update(per_label(rows))
            phases["importance-weighted evaluation"].update(per_label(iw_rows))
            phases["importance-weighted evaluation"][
                f"q(z | x, y) of the particles (S x {c} x B)"] = samples * c * iw_rows * b
        else:
            phases["training"][f"code densities per label (B x {c} x L)"] = (
                _TRAINING * batch * c * latent * b)
        phases["importance-weighted evaluation"][
            f"p(z | y) of the particles (S x B x {c} x L)"] = samples * iw_rows * c * latent * b
    elif isinstance(model.prior, MixtureOfGaussiansPrior | VampPrior):
        c = (model.prior.n_components if isinstance(model.prior, MixtureOfGaussiansPrior)
             else model.prior.n_pseudo)
        phases["training"][f"prior densities (B x {c}, float64)"] = _TRAINING * 3 * batch * c * 8
        phases["evaluation"][f"prior densities (rows x {c}, float64)"] = 3 * rows * c * 8
        phases["importance-weighted evaluation"][
            f"prior densities (S x B x {c}, float64)"] = 3 * samples * iw_rows * c * 8
        if isinstance(model.prior, VampPrior):
            phases["training"][f"encoder on the {c} pseudo-inputs"] = _TRAINING * plain(c)
    what = f"a {model.name} with {_prior_words(model)} on {n_train} x {d} images"
    return MemoryEstimate(what, resident, phases)


def _prior_words(model: VAE) -> str:
    """The latent prior in words (``"10 labels"``, ``"a 10-component mog prior"``)."""
    if isinstance(model, GMVAE):
        return f"{model.n_clusters} labels"
    if isinstance(model.prior, MixtureOfGaussiansPrior):
        return f"a {model.prior.n_components}-component mixture prior"
    if isinstance(model.prior, VampPrior):
        return f"a VampPrior of {model.prior.n_pseudo} pseudo-inputs"
    return "a standard Normal prior"


# ------------------------------------------------------------------------------ time
#: Seconds per pass of the observed information's double backward: a fixed cost plus one
#: per entry of the ``N x K x D`` graph (measured on one CPU thread, float64, GMM: Old
#: Faithful K=2 6 ms a pass; 10,000 x 2, K=5 14 ms; 50,000 x 2, K=3 82 ms; 100,000 x 2, K=5
#: 79 ms; the Student-t mixture about twice the GMM). Within a factor of 3 of what was
#: measured on a shared 2-core machine.
SE_PASS_SECONDS = (6e-3, 1.5e-7)


def standard_errors_seconds(model: FiniteMixture, n: int, d: int) -> float:
    """Rough seconds of :func:`~ppl_models.infer.standard_errors.compute_standard_errors`
    by observed information: one double-backward pass per free parameter ``P``,
    :math:`P\\,(a + b\\,N K D)` with :data:`SE_PASS_SECONDS` ``= (a, b)``."""
    if not isinstance(model, FiniteMixture):
        raise ValueError(
            f"standard_errors_seconds needs a FiniteMixture; got {type(model).__name__}")
    _check_sizes(n=n, d=d)
    fixed, per_entry = SE_PASS_SECONDS
    return _free_parameters(model, d) * (fixed + per_entry * n * model.n_components * d)
