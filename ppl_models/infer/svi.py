"""Stochastic variational inference for any model and guide, full-batch or in minibatches."""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta, AutoGuide, AutoLaplaceApproximation
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from tqdm.auto import tqdm

import guides
from ppl_models.data import check_data
from ppl_models.images import DynamicBinarizer, binarize_threshold
from ppl_models.infer.init import init_strategy, initial_values
from ppl_models.infer.result import FitResult

__all__ = ["CHECKPOINT_NAME", "OBJECTIVES", "fit_svi", "kl_weight", "load_checkpoint"]

#: What minibatch steps differentiate (see ``objective`` of :func:`fit_svi`).
OBJECTIVES = ("auto", "pyro", "model")

#: File name of the checkpoint written into ``checkpoint_dir`` after every epoch.
CHECKPOINT_NAME = "checkpoint.pt"


def _plateau(history: list[float], window: int, min_delta: float) -> bool:
    """Whether the mean of the last ``window`` values rose by less than ``min_delta``."""
    if len(history) < 2 * window:
        return False
    recent = sum(history[-window:]) / window
    before = sum(history[-2 * window : -window]) / window
    return recent - before < min_delta


def kl_weight(epoch: int, warmup_epochs: int) -> float:
    r"""KL warm-up weight of epoch ``epoch`` (0-based): :math:`\beta = \min(1, e / W)`.

    It rises linearly from 0 (first epoch) to 1, reached at epoch ``W`` and kept after;
    ``W = 0`` means no warm-up (:math:`\beta = 1` throughout). Bowman et al. (2016);
    Sønderby et al. (2016).
    """
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, epoch / warmup_epochs)


class _ScaleSites(Messenger):
    """Multiply the log density of the named sample sites by ``weight`` (model and guide).

    Applied to the latent sites of model and guide alike, it turns the ELBO into
    :math:`\\mathbb E_q[\\log p(x|z)] - \\beta\\, \\mathrm{KL}`. Unlike ``poutine.scale`` it
    allows :math:`\\beta = 0` and touches only the named sites.
    """

    def __init__(self, names: tuple[str, ...], weight: float = 1.0) -> None:
        super().__init__()
        self.names = frozenset(names)
        self.weight = weight

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] in self.names:
            msg["scale"] = self.weight * msg["scale"]


def fit_svi(
    model: Any,
    data: torch.Tensor,
    *,
    guide: str | Callable | None = None,
    num_steps: int = 2000,
    lr: float | None = None,
    lr_decay: float = 0.1,
    optim: pyro.optim.PyroOptim | None = None,
    num_particles: int = 1,
    init: str | Mapping[str, Any] | None = "kmeans++",
    early_stop: bool = False,
    window: int | None = None,
    min_delta: float = 1e-4,
    num_draws: int = 1000,
    guide_options: Mapping[str, Any] | None = None,
    seed: int | None = 0,
    progress: bool | None = None,
    columns: list[str] | None = None,
    batch_size: int | None = None,
    num_epochs: int | None = None,
    kl_warmup_epochs: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    binarize: str | None = None,
    objective: str = "auto",
) -> FitResult:
    r"""Fit a model by maximising the ELBO with a swappable guide, full-batch or in minibatches.

    :math:`\mathrm{ELBO}(\phi) = \mathbb E_{q_\phi(\theta)}[\log p(x, \theta) - \log
    q_\phi(\theta)] \le \log p(x)` (Hoffman et al., 2013; Ranganath et al., 2014), with
    discrete labels summed out exactly by ``TraceEnum_ELBO`` when the model declares
    ``enumerated_sites`` (Obermeyer et al., 2019), ``Trace_ELBO`` otherwise.

    **Full batch** (no ``batch_size`` nor ``num_epochs``): ``num_steps`` steps on all the data.

    **Minibatches** (``batch_size`` and/or ``num_epochs``): each epoch visits the data once
    in shuffled batches from a ``torch.utils.data.DataLoader`` (seeded generator); the model
    and guide are called as ``model(x_batch, n_obs=N, subsample=indices)`` so that their
    ``pyro.plate("data", N, subsample=indices)`` scales the batch's terms by ``N / B`` and each
    step's ELBO is an unbiased estimate of the full-data ELBO (Hoffman et al., 2013). Parameters
    are updated by one ``torch.optim.Adam`` over all of them (or by ``optim`` through Pyro's
    ``SVI``); the one synchronisation per step is reading the loss.

    Parameters
    ----------
    model
        A model object (``model(data)`` plus declared attributes) or a Pyro model callable.
    data : Tensor (N, D)
    guide : str, callable or None
        ``None`` (default): the model's own ``guide`` if it has one (the VAE family), else
        ``"mean_field"``. Otherwise a kind of :func:`guides.build` (``"map"``,
        ``"mean_field"``, ``"full_rank"``, ``"low_rank"``, ``"flow"``, ``"laplace"``) or a
        guide callable.
    num_steps : int
        Optimisation steps of the full-batch mode.
    lr : float, optional
        Initial learning rate: default 0.01 (full batch, ``ClippedAdam``) or 0.001
        (minibatches, ``Adam``).
    lr_decay : float
        The learning rate decays geometrically to ``lr * lr_decay`` at the last step, so the
        final iterate settles instead of jittering at the step size's noise level.
    optim : pyro.optim.PyroOptim, optional
        Replaces the default optimiser.
    num_particles : int
        Monte-Carlo particles per ELBO estimate.
    init : {"kmeans++", "em", "prior"}, dict or None
        Where a guide built by kind starts (see :func:`ppl_models.infer.init.initial_values`).
    early_stop : bool
        Stop when the ELBO per observation, averaged over ``window`` steps (epochs in minibatch
        mode), rises by less than ``min_delta`` from one window to the next. The same rule sets
        ``converged``.
    window : int, optional
        Default 100 steps (full batch) or 5 epochs (minibatches).
    num_draws : int
        Guide draws of the global latent sites kept in the result (none for ``map``, nor
        for models without global latent sites such as the VAEs).
    guide_options : dict, optional
        Extra keyword arguments of the guide family (``rank``, ``init_scale``, ...).
    seed : int or None
    progress : bool or None
        Progress bar (default: when standard error is a terminal).
    columns : list of str, optional
    batch_size : int, optional
        Minibatch size (default in minibatch mode: all the data).
    num_epochs : int, optional
        Passes over the data (default in minibatch mode: 10).
    kl_warmup_epochs : int
        KL warm-up (minibatch mode): in epoch ``e`` the log densities of the latent sites
        (``local_sites`` and ``enumerated_sites``) in model *and* guide are multiplied by
        :math:`\beta_e = \min(1, e / W)` (:func:`kl_weight`), which weights the KL term of the
        ELBO by :math:`\beta_e` and leaves the reconstruction term alone.
    checkpoint_dir : path, optional
        After every epoch, write ``checkpoint_dir/checkpoint.pt`` (atomically replaced):
        ``epoch``, ``model_state`` (the model's ``state_dict()`` when it is an ``nn.Module``),
        ``param_store`` (Pyro's parameters, unconstrained), ``optimizer_state`` and ``history``:
        tensors and plain Python values only, so ``torch.load(..., weights_only=True)``
        reads it (:func:`load_checkpoint`).
    binarize : {None, "dynamic"}
        ``"dynamic"`` (minibatch mode): ``data`` are intensities in [0, 1] and every batch is
        drawn as binary pixels :math:`\mathrm{Bernoulli}(x)` afresh, in the ``DataLoader``, with
        a generator seeded from ``seed`` (:class:`ppl_models.images.DynamicBinarizer`).
    objective : {"auto", "pyro", "model"}
        What minibatch steps differentiate. ``"pyro"``: Pyro's ``Trace_ELBO`` /
        ``TraceEnum_ELBO`` on the model and guide. ``"model"``: the model's own estimator of
        the same ELBO, ``reconstruction - beta * KL`` from its ``elbo_terms`` (the VAE family;
        the same plate scaling ``N / B``, the KL in closed form where PyTorch has it, the
        GMVAE's label summed exactly), which skips Pyro's per-step tracing (the tests check it
        against ``Trace_ELBO`` / ``TraceEnum_ELBO``). ``"auto"`` (default): ``"model"`` when
        the guide is the model's own, the model is an ``nn.Module`` with ``elbo_terms``,
        ``optim`` is None and ``num_particles == 1``; else ``"pyro"``. Either way, Pyro's
        validation (when enabled) runs on the first step of each epoch only.

    Returns
    -------
    FitResult
        Full batch: ``history["elbo"]`` holds the ELBO estimate per observation at each step.
        Minibatches: per epoch, ``history["elbo"]`` is the mean over the epoch's steps of the
        training objective per observation (β-weighted during warm-up); ``history["beta"]``
        the KL weight; and, when the model has ``elbo_terms``, its terms
        (``reconstruction``, ``kl``; a GMVAE's ``reconstruction``, ``kl_z``, ``kl_y``) per
        observation at β = 1, computed once at the end of each epoch on a fixed evaluation
        batch (``min(N, batch_size)`` rows chosen by the seed, with fixed noise), so that
        ``reconstruction - kl`` is that batch's ELBO. ``params`` is the guide's median and
        ``draws`` ``(1, num_draws, ...)`` guide draws of each global latent site (``{}`` and
        ``None`` for a model without any, whose fitted networks live in the model object
        itself and in the checkpoint).
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer; got {num_steps!r}")
    if not isinstance(num_draws, int) or num_draws < 0:
        raise ValueError(f"num_draws must be a non-negative integer; got {num_draws!r}")
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1]; got {lr_decay}")
    minibatch = batch_size is not None or num_epochs is not None
    if not minibatch:
        for name, value, default in (
            ("kl_warmup_epochs", kl_warmup_epochs, 0),
            ("checkpoint_dir", checkpoint_dir, None),
            ("binarize", binarize, None),
        ):
            if value != default:
                raise ValueError(f"{name} needs minibatch mode: pass batch_size or num_epochs")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}")
    if binarize not in (None, "dynamic"):
        raise ValueError(
            f"binarize must be None or 'dynamic'; got {binarize!r} (threshold at load time: "
            "load_images(..., binarize='threshold'))"
        )
    data = _validated(model, data, binarize)
    seed = 0 if seed is None else int(seed)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    n = data.shape[0]
    if guide is None:
        guide = "model" if callable(getattr(model, "guide", None)) else "mean_field"
    options = dict(guide_options or {})
    if guide == "model":
        if not callable(getattr(model, "guide", None)):
            raise ValueError(f"guide='model' needs a model with its own guide; {model!r} has none")
        guide_fn = model.guide
        kind = f"{type(model).__name__}.guide"
    elif isinstance(guide, str):
        values = initial_values(model, data, init, seed)
        if guide != "flow":
            options.setdefault("init_loc_fn", init_strategy(values))
        guide_fn = guides.build(guide, model, **options)
        kind = guide
    else:
        guide_fn = guides.build(guide, model)
        kind = getattr(guide, "__name__", type(guide).__name__)
    enumerated = tuple(getattr(model, "enumerated_sites", ()))
    plate_nesting = getattr(model, "max_plate_nesting", None)
    if enumerated:
        loss = TraceEnum_ELBO(max_plate_nesting=plate_nesting, num_particles=num_particles)
    else:
        loss = Trace_ELBO(max_plate_nesting=plate_nesting or math.inf, num_particles=num_particles)
    model_fn = guides.model_callable(model)
    if progress is None:
        progress = sys.stderr.isatty()

    if minibatch:
        run = _fit_minibatch(
            model, model_fn, guide_fn, loss, data,
            objective=objective, own_guide=guide == "model",
            batch_size=n if batch_size is None else batch_size,
            num_epochs=10 if num_epochs is None else num_epochs,
            lr=1e-3 if lr is None else lr, lr_decay=lr_decay, optim=optim,
            kl_warmup_epochs=kl_warmup_epochs, checkpoint_dir=checkpoint_dir,
            binarize=binarize, early_stop=early_stop, window=window or 5,
            min_delta=min_delta, seed=seed, progress=progress, kind=kind,
        )
        history, converged, fit_seconds, extra = run
        trace_args, trace_kwargs = _trace_batch(data)
        elbo_history = history["elbo"]
        window = window or 5
    else:
        lr = 0.01 if lr is None else lr
        window = window or 100
        optimiser = optim or pyro.optim.ClippedAdam({"lr": lr, "lrd": lr_decay ** (1 / num_steps)})
        svi = SVI(model_fn, guide_fn, optimiser, loss)
        elbo_history: list[float] = []
        converged = False
        start = time.perf_counter()
        with tqdm(total=num_steps, disable=not progress, desc=f"SVI ({kind})", leave=False) as bar:
            for _ in range(num_steps):
                value = svi.step(data)
                _check_finite(value, len(elbo_history) + 1)
                elbo_history.append(-value / n)
                bar.update(1)
                if len(elbo_history) % 50 == 0:
                    bar.set_postfix(elbo=f"{elbo_history[-1]:.4f}", refresh=False)
                if early_stop and _plateau(elbo_history, window, min_delta):
                    converged = True
                    break
        if not early_stop:
            converged = _plateau(elbo_history, window, min_delta)
        fit_seconds = time.perf_counter() - start
        history = {"elbo": elbo_history}
        trace_args, trace_kwargs = (data,), {}
        extra = {}

    sites = list(guides.global_latent_supports(model, *trace_args, **trace_kwargs))
    if isinstance(guide_fn, AutoLaplaceApproximation):
        # Trained as MAP; the Gaussian at the mode has the inverse Hessian as covariance.
        guide_fn = guide_fn.laplace_approximation(*trace_args, **trace_kwargs)
    point = isinstance(guide_fn, AutoDelta) or num_draws == 0
    params: dict[str, torch.Tensor] = {}
    draws = None
    if sites:
        with torch.no_grad():
            if isinstance(guide_fn, AutoGuide):
                params = {
                    k: v.detach()
                    for k, v in guide_fn.median(*trace_args, **trace_kwargs).items()
                    if k in sites
                }
            else:
                one = _draw(guide_fn, trace_args, trace_kwargs, sites, 1)
                params = {k: v[0, 0] for k, v in one.items()}
            if not point:
                draws = _draw(guide_fn, trace_args, trace_kwargs, sites, num_draws)
    info = {
        "guide": kind,
        "elbo": float(sum(elbo_history[-window:]) / len(elbo_history[-window:])),
        "elbo_window": min(window, len(elbo_history)),
        "loss": type(loss).__name__,
        "num_particles": num_particles,
        "point_estimate": point and bool(sites),
        **extra,
    }
    return FitResult(
        model=model,
        method="svi",
        data=data,
        params=params,
        draws=draws,
        history=history,
        converged=converged,
        n_iter=len(elbo_history),
        seed=seed,
        fit_seconds=fit_seconds,
        info=info,
        columns=list(columns) if columns is not None else [],
        guide=guide_fn,
    )


def _check_finite(value: float, step: int) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(
            f"the ELBO became {value} at step {step}; lower lr or change init"
        )


def _validated(model: Any, data: Any, binarize: str | None) -> torch.Tensor:
    """The model's own validation; with dynamic binarization, of a binarized copy."""
    if binarize == "dynamic":
        data = check_data(data)
        if bool(((data < 0) | (data > 1)).any()):
            raise ValueError(
                "binarize='dynamic' draws pixels as Bernoulli(intensity): the data must lie "
                f"in [0, 1]; got [{float(data.min()):.4g}, {float(data.max()):.4g}]"
            )
        if hasattr(model, "validate"):
            data = data.to(model.validate(binarize_threshold(data)).dtype)
        return data
    return model.validate(data) if hasattr(model, "validate") else data


def _trace_batch(data: torch.Tensor) -> tuple[tuple, dict]:
    """Arguments for one cheap traced run of a minibatch model (two rows of the data)."""
    rows = torch.arange(min(2, data.shape[0]))
    return (data[rows],), {"n_obs": data.shape[0], "subsample": rows}


def _takes_subsample(fn: Callable) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True  # cannot tell: let Pyro complain if it does not
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    return "subsample" in parameters and "n_obs" in parameters


class _Rows(torch.utils.data.Dataset):
    """Rows of a tensor indexed by a whole batch of indices at once (no per-row collation)."""

    def __init__(self, data: torch.Tensor, transform: Callable | None = None) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.data[index]
        if self.transform is not None:
            rows = self.transform(rows)
        return rows, index


class _ShuffledBatches(torch.utils.data.Sampler):
    """A fresh seeded permutation per epoch, cut into index tensors of ``batch_size``."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(torch.randperm(self.n, generator=self.generator).split(self.batch_size))


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def _fit_minibatch(
    model: Any,
    model_fn: Callable,
    guide_fn: Callable,
    loss: Trace_ELBO | TraceEnum_ELBO,
    data: torch.Tensor,
    *,
    objective: str,
    own_guide: bool,
    batch_size: int,
    num_epochs: int,
    lr: float,
    lr_decay: float,
    optim: pyro.optim.PyroOptim | None,
    kl_warmup_epochs: int,
    checkpoint_dir: str | os.PathLike[str] | None,
    binarize: str | None,
    early_stop: bool,
    window: int,
    min_delta: float,
    seed: int,
    progress: bool,
    kind: str,
) -> tuple[dict[str, list[float]], bool, float, dict[str, Any]]:
    """The epoch loop of :func:`fit_svi` in minibatch mode."""
    n = data.shape[0]
    batch_size = min(_positive(batch_size, "batch_size"), n)
    num_epochs = _positive(num_epochs, "num_epochs")
    if isinstance(kl_warmup_epochs, bool) or not isinstance(kl_warmup_epochs, int) or (
        kl_warmup_epochs < 0
    ):
        raise ValueError(
            f"kl_warmup_epochs must be a non-negative integer; got {kl_warmup_epochs!r}"
        )
    use_model = _use_model_objective(model, objective, own_guide, optim, loss.num_particles)
    if not use_model:
        for fn, what in ((model_fn, "model"), (guide_fn, "guide")):
            if not _takes_subsample(fn):
                raise ValueError(
                    f"minibatches need a {what} that takes n_obs= and subsample= (and puts its "
                    "per-observation sites in pyro.plate(..., n_obs, subsample=subsample)); "
                    f"{type(model).__name__} does not: fit it without batch_size/num_epochs"
                )
    latent = tuple(dict.fromkeys(
        (*getattr(model, "local_sites", ()), *getattr(model, "enumerated_sites", ()))
    ))
    if kl_warmup_epochs and not (latent or use_model):
        raise ValueError(
            "kl_warmup_epochs needs a model that declares its latent sites (local_sites)"
        )

    generator = torch.Generator().manual_seed(seed)
    transform = DynamicBinarizer(seed + 1) if binarize == "dynamic" else None
    loader = torch.utils.data.DataLoader(
        _Rows(data, transform),
        sampler=_ShuffledBatches(n, batch_size, generator),
        batch_size=None,
    )
    # A fixed evaluation batch for the ELBO's terms, with fixed noise each epoch.
    eval_rows = torch.randperm(n, generator=generator)[:batch_size]
    eval_x = data[eval_rows]
    if transform is not None:
        eval_x = DynamicBinarizer(seed + 2)(eval_x)
    terms_fn = getattr(model, "elbo_terms", None)

    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * num_epochs
    if use_model:
        step_fn: _Step = _ModelObjectiveStep(model, lr, lr_decay, total_steps)
    else:
        scaled = latent if kl_warmup_epochs else ()
        step_fn = _PyroStep(model_fn, guide_fn, loss, optim, scaled, lr, lr_decay, total_steps)
    history: dict[str, list[float]] = {"elbo": [], "beta": []}
    epoch_seconds: list[float] = []
    converged = False
    path = None
    if checkpoint_dir is not None:
        path = Path(checkpoint_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
    validate = is_validation_enabled()  # kept for the first step of each epoch
    steps = 0
    start = time.perf_counter()
    with tqdm(total=total_steps, disable=not progress, desc=f"SVI ({kind})", leave=False) as bar:
        for epoch in range(num_epochs):
            epoch_start = time.perf_counter()
            beta = kl_weight(epoch, kl_warmup_epochs)
            step_fn.beta = beta
            total = 0.0
            with ExitStack() as stack:
                for i, (x, rows) in enumerate(loader):
                    if i == 1 and validate:
                        stack.enter_context(pyro.validation_enabled(False))
                    value = step_fn(x, n_obs=n, subsample=rows)
                    steps += 1
                    _check_finite(value, steps)
                    total += value
                    bar.update(1)
            history["elbo"].append(-total / steps_per_epoch / n)
            history["beta"].append(beta)
            if terms_fn is not None:
                for name, value in _terms(terms_fn, eval_x, seed).items():
                    history.setdefault(name, []).append(value)
            epoch_seconds.append(time.perf_counter() - epoch_start)
            bar.set_postfix(epoch=epoch + 1, elbo=f"{history['elbo'][-1]:.4f}", refresh=False)
            if path is not None:
                _save_checkpoint(path, model, step_fn.optimizer, history, epoch + 1, seed)
            if early_stop and _plateau(history["elbo"], window, min_delta):
                converged = True
                break
    if not early_stop:
        converged = _plateau(history["elbo"], window, min_delta)
    fit_seconds = time.perf_counter() - start
    extra = {
        "objective": f"{type(model).__name__}.elbo_terms" if use_model else "pyro",
        "batch_size": batch_size,
        "num_epochs": len(epoch_seconds),
        "steps_per_epoch": steps_per_epoch,
        "num_steps": steps,
        "kl_warmup_epochs": kl_warmup_epochs,
        "binarize": binarize,
        "eval_batch": int(eval_x.shape[0]),
        "epoch_seconds": epoch_seconds,
        "checkpoint": None if path is None else str(path / CHECKPOINT_NAME),
    }
    return history, converged, fit_seconds, extra


def _use_model_objective(
    model: Any, objective: str, own_guide: bool, optim: Any, num_particles: int
) -> bool:
    """Whether to train on the model's own ``elbo_terms`` (see ``objective`` of fit_svi)."""
    reasons = []
    if not own_guide:
        reasons.append("the guide is not the model's own")
    if not (callable(getattr(model, "elbo_terms", None)) and isinstance(model, torch.nn.Module)):
        reasons.append("the model is not an nn.Module with elbo_terms")
    if optim is not None:
        reasons.append("a Pyro optimiser was given")
    if num_particles != 1:
        reasons.append("num_particles > 1")
    if objective == "model" and reasons:
        raise ValueError(f"objective='model' is not available: {'; '.join(reasons)}")
    return objective == "model" or (objective == "auto" and not reasons)


class _Step:
    """One optimisation step on a minibatch: ``step(x, n_obs=N, subsample=rows) -> loss``.

    ``beta`` is the KL weight; ``optimizer`` what a checkpoint saves. Parameters are updated
    by one ``torch.optim.Adam`` (PyTorch's multi-tensor update for all of them, instead of
    Pyro's one optimiser per parameter), whose learning rate decays geometrically to
    ``lr * lr_decay`` over ``total_steps``. The loss is read once per step: the only
    synchronisation.
    """

    beta: float = 1.0
    optimizer: Any = None

    def __init__(self, lr: float, lr_decay: float, total_steps: int) -> None:
        self.lr, self.gamma = lr, lr_decay ** (1 / total_steps)

    def _update(self, objective: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        for group in self.optimizer.param_groups:
            group["lr"] *= self.gamma
        return objective.item()


class _ModelObjectiveStep(_Step):
    r"""The model's own ELBO estimator, from :meth:`elbo_terms` on the minibatch.

    :math:`-\frac{N}{B} \sum_{i \in \text{batch}} [t^{\mathrm{rec}}_i - \beta \sum_k
    t^{(k)}_i]` with the reconstruction term first in ``model.term_names`` and the KL terms
    after it: the same plate scaling as ``pyro.plate("data", N, subsample=rows)``.
    """

    def __init__(self, model: Any, lr: float, lr_decay: float, total_steps: int) -> None:
        super().__init__(lr, lr_decay, total_steps)
        self.model = model
        self.reconstruction, *self.kl_terms = model.term_names
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def __call__(self, x: torch.Tensor, *, n_obs: int, subsample: torch.Tensor) -> float:
        terms = self.model.elbo_terms(x)
        kl = sum(terms[name] for name in self.kl_terms)
        elbo = terms[self.reconstruction] - self.beta * kl
        return self._update(elbo.sum() * (-n_obs / x.shape[0]))


class _PyroStep(_Step):
    """Pyro's ``Trace_ELBO``/``TraceEnum_ELBO`` on the model and guide.

    The optimiser covers every parameter in Pyro's store, found after the first loss (and
    again whenever the store grows). With ``optim`` given, Pyro's ``SVI.step`` instead. KL
    warm-up scales the latent sites of model and guide (:class:`_ScaleSites`).
    """

    def __init__(
        self,
        model_fn: Callable,
        guide_fn: Callable,
        loss: Trace_ELBO | TraceEnum_ELBO,
        optim: pyro.optim.PyroOptim | None,
        latent: tuple[str, ...],
        lr: float,
        lr_decay: float,
        total_steps: int,
    ) -> None:
        super().__init__(lr, lr_decay, total_steps)
        self.scaler = _ScaleSites(latent) if latent else None
        if self.scaler is not None:
            model_fn, guide_fn = self.scaler(model_fn), self.scaler(guide_fn)
        self.model_fn, self.guide_fn, self.loss = model_fn, guide_fn, loss
        self.svi = SVI(model_fn, guide_fn, optim, loss) if optim is not None else None
        self.optimizer = optim
        self._known = -1

    @property
    def beta(self) -> float:  # type: ignore[override]
        return 1.0 if self.scaler is None else self.scaler.weight

    @beta.setter
    def beta(self, value: float) -> None:
        if self.scaler is not None:
            self.scaler.weight = value

    def _collect(self) -> None:
        store = pyro.get_param_store()
        if len(store) == self._known:
            return
        params = [p for _, p in store.named_parameters()]
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(params, lr=self.lr)
        else:
            seen = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
            fresh = [p for p in params if id(p) not in seen]
            if fresh:
                lr = self.optimizer.param_groups[0]["lr"]
                self.optimizer.add_param_group({"params": fresh, "lr": lr})
        self._known = len(store)

    def __call__(self, *args: Any, **kwargs: Any) -> float:
        if self.svi is not None:
            return self.svi.step(*args, **kwargs)
        objective = self.loss.differentiable_loss(self.model_fn, self.guide_fn, *args, **kwargs)
        self._collect()
        return self._update(objective)


def _terms(terms_fn: Callable, x: torch.Tensor, seed: int) -> dict[str, float]:
    """Per-observation means of the model's ELBO terms on ``x``, with fixed noise."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        terms = terms_fn(x)
        return {name: float(value.mean()) for name, value in terms.items()}


def _save_checkpoint(
    path: Path, model: Any, optimizer: Any, history: dict, epoch: int, seed: int
) -> None:
    state = {
        "epoch": epoch,
        "seed": seed,
        "model_state": model.state_dict() if isinstance(model, torch.nn.Module) else {},
        "param_store": {
            name: value.detach().clone()
            for name, value in pyro.get_param_store().named_parameters()
        },
        "optimizer_state": optimizer.state_dict()
        if isinstance(optimizer, torch.optim.Optimizer)
        else {},
        "history": {name: list(values) for name, values in history.items()},
    }
    tmp = path / (CHECKPOINT_NAME + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / CHECKPOINT_NAME)


def load_checkpoint(path: str | os.PathLike[str], model: Any = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`fit_svi` (``weights_only=True``: no code runs).

    Parameters
    ----------
    path : path
        The checkpoint file, or the ``checkpoint_dir`` holding it.
    model : nn.Module, optional
        If given, its networks are restored from ``model_state``.

    Returns
    -------
    dict
        ``epoch``, ``seed``, ``model_state``, ``param_store``, ``optimizer_state``,
        ``history``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint")
    state = torch.load(path, weights_only=True)
    if model is not None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"only an nn.Module model can be restored; got {type(model).__name__}")
        model.load_state_dict(state["model_state"])
    return state


def _draw(guide: Callable, args: tuple, kwargs: dict, sites: list[str], num: int) -> dict:
    """``num`` guide draws of each site, shaped ``(1, num, *site_shape)``."""
    samples: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    for _ in range(num):
        trace = pyro.poutine.trace(guide).get_trace(*args, **kwargs)
        for s in sites:
            samples[s].append(trace.nodes[s]["value"].detach())
    return {s: torch.stack(v).unsqueeze(0) for s, v in samples.items()}
