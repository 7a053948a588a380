"""The epoch loop of :func:`~ppl_models.infer.svi.fit_svi` in minibatch mode.

Shuffled batches from a ``DataLoader``, a subsampled ``pyro.plate``, one optimisation step per
batch (the model's own ELBO estimator or Pyro's), KL warm-up, per-epoch ELBO terms,
checkpoints, a time limit and a per-epoch callback.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from tqdm.auto import tqdm

from ppl_models.images import DynamicBinarizer
from ppl_models.infer.checkpoint import CHECKPOINT_NAME, save_checkpoint
from ppl_models.infer.stopping import check_finite, plateau

__all__ = ["fit_minibatch", "kl_weight"]


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


def fit_minibatch(
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
    time_limit: float | None = None,
    callback: Callable[[int, dict[str, list[float]]], bool | None] | None = None,
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
    stopped_by = "num_epochs"
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
                    check_finite(value, steps)
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
                save_checkpoint(path, model, step_fn.optimizer, history, epoch + 1, seed)
            if early_stop and plateau(history["elbo"], window, min_delta):
                converged = True
                stopped_by = "early_stop"
                break
            if callback is not None and callback(epoch + 1, history):
                stopped_by = "callback"
                break
            if time_limit is not None and time.perf_counter() - start >= time_limit:
                stopped_by = "time_limit"
                break
    if not early_stop:
        converged = plateau(history["elbo"], window, min_delta)
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
        "stopped_by": stopped_by,
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

