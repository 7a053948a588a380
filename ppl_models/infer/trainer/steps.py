r"""Step strategies of the minibatch trainer: one optimisation step on one batch.

A step owns its optimisers and learning-rate schedulers (any number of them: an adversarial
step has one per player) and exposes their state for checkpoints through
:meth:`Step.state_dict` / :meth:`Step.load_state_dict`. :data:`STEPS` is the registry
(name -> builder from :class:`StepInputs`); a new training scheme is one new entry.

=============== =================================================================================
name            what a step differentiates
=============== =================================================================================
``pyro``        Pyro's ``Trace_ELBO`` / ``TraceEnum_ELBO`` on the model and guide
``model``       the model's own ELBO estimator, ``reconstruction - beta * KL`` (``elbo_terms``)
``adversarial`` ``d_steps`` discriminator updates, then one generator update, of an
                ``AdversarialModel``, one optimiser each (:class:`AdversarialStep`)
=============== =================================================================================

Each update goes through :meth:`Step._minimise`, which a data-parallel run
(:meth:`Step.distribute`) routes through DDP (:mod:`ppl_models.infer.trainer.parallel`).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.poutine.messenger import Messenger
from torch.nn import functional as F

from ppl_models._shared.checks import check_choice, check_float, check_int
from ppl_models.infer.trainer.parallel import ParallelUpdate
from ppl_models.models.protocols import AdversarialModel, AmortizedModel

__all__ = [
    "ADVERSARIAL_LOSSES",
    "OBJECTIVES",
    "STEPS",
    "AdversarialStep",
    "ModelObjectiveStep",
    "PyroStep",
    "ScaleSites",
    "Step",
    "StepInputs",
    "kl_weight",
    "objectives",
    "resolve_objective",
]


def kl_weight(epoch: int, warmup_epochs: int) -> float:
    r"""KL warm-up weight of epoch ``epoch`` (0-based): :math:`\beta = \min(1, e / W)`.

    It rises linearly from 0 (first epoch) to 1, reached at epoch ``W`` and kept after;
    ``W = 0`` means no warm-up (:math:`\beta = 1` throughout). Bowman et al. (2016);
    Sønderby et al. (2016).
    """
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, epoch / warmup_epochs)


class ScaleSites(Messenger):
    r"""Multiply the log density of the named sample sites by ``weight`` (model and guide).

    Applied to the latent sites of model and guide alike, it turns the ELBO into
    :math:`\mathbb E_q[\log p(x|z)] - \beta\, \mathrm{KL}`. Unlike ``poutine.scale`` it
    allows :math:`\beta = 0` and touches only the named sites.
    """

    def __init__(self, names: tuple[str, ...], weight: float = 1.0) -> None:
        super().__init__()
        self.names = frozenset(names)
        self.weight = weight

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] in self.names:
            msg["scale"] = self.weight * msg["scale"]


@dataclass(frozen=True)
class StepInputs:
    """What a step builder may use: the model, its Pyro callables, the loss and the schedule.

    ``latent_sites`` are the sites KL warm-up scales (empty without warm-up); ``total_steps``
    the number of steps the learning-rate schedule spans.
    """

    model: Any
    model_fn: Callable
    guide_fn: Callable
    loss: Trace_ELBO | TraceEnum_ELBO
    optim: pyro.optim.PyroOptim | None
    latent_sites: tuple[str, ...]
    lr: float
    lr_decay: float
    total_steps: int


class Step(ABC):
    """One optimisation step on a batch: ``step(x, n_obs=N, subsample=rows) -> loss``.

    ``beta`` is the KL weight of the current epoch. ``optimizers`` and ``schedulers`` are what
    a checkpoint saves; a subclass whose optimisers are not ``torch.optim`` ones overrides
    :meth:`state_dict` and :meth:`load_state_dict`.
    """

    name: str = "step"
    beta: float = 1.0
    #: Data-parallel runs: this rank's share ``b_r / B`` of the current global batch (set by
    #: the trainer before each step), by which its loss is weighted (see
    #: :mod:`ppl_models.infer.trainer.parallel`).
    weight: float = 1.0

    def __init__(self) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list[torch.optim.lr_scheduler.LRScheduler] = []
        self._parallel: dict[int, ParallelUpdate] = {}

    def distribute(self, networks: Sequence[torch.nn.Module], world: int) -> None:
        """Train data-parallel over ``world`` ranks from now on: every optimiser's updates go
        through a :class:`~ppl_models.infer.trainer.parallel.ParallelUpdate` (the parameters
        of ``networks`` in DDP, which copies rank 0's values to every rank now; the others
        summed by hand). Collective: every rank calls it, in the same order. Optimisers that
        already have theirs keep it."""
        for optimizer in self.optimizers:
            if id(optimizer) not in self._parallel:
                self._parallel[id(optimizer)] = ParallelUpdate(optimizer, networks, world)

    @property
    def parallel_updates(self) -> list[ParallelUpdate]:
        """The data-parallel updates, one per optimiser (empty in one process)."""
        return list(self._parallel.values())

    def _minimise(self, optimizer: torch.optim.Optimizer,
                  fn: Callable[..., tuple[torch.Tensor, Any]], *args: Any,
                  **kwargs: Any) -> tuple[float, Any]:
        """One update of ``optimizer``: ``loss, extra = fn(*args, **kwargs)``, its backward,
        (data parallel) the gradients reduced over the ranks, the optimiser's step. Returns
        the loss (the global batch's in a data-parallel run) and ``extra``."""
        optimizer.zero_grad(set_to_none=True)
        update = self._parallel.get(id(optimizer))
        if update is None:
            loss, extra = fn(*args, **kwargs)
            loss.backward()
            value = loss.item()
        else:
            value, extra = update(self.weight, fn, *args, **kwargs)
        optimizer.step()
        return value, extra

    @abstractmethod
    def __call__(self, x: torch.Tensor, *, n_obs: int, subsample: torch.Tensor) -> float:
        """Update the parameters on one batch; return the loss (the negative objective)."""

    def prepare(self, x: torch.Tensor, *, n_obs: int, subsample: torch.Tensor) -> None:
        """Create what is made lazily (parameters, optimisers) before training or resuming,
        without drawing from the global RNG. Nothing by default."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Every optimiser's and scheduler's state."""
        return {
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (a ``ValueError`` if the counts differ)."""
        for key, owned in (("optimizers", self.optimizers), ("schedulers", self.schedulers)):
            saved = state.get(key, [])
            if len(saved) != len(owned):
                raise ValueError(
                    f"the checkpoint holds {len(saved)} {key} and the {self.name} step has "
                    f"{len(owned)}"
                )
            for obj, value in zip(owned, saved, strict=True):
                obj.load_state_dict(value)


class _AdamStep(Step):
    """A step with one ``torch.optim.Adam`` over its parameters, decayed geometrically.

    PyTorch's multi-tensor update for all parameters at once (instead of Pyro's optimiser per
    parameter); ``ExponentialLR`` takes the rate to ``lr * lr_decay`` over ``total_steps``.
    The loss is read once per step: the only synchronisation.
    """

    def __init__(self, lr: float, lr_decay: float, total_steps: int) -> None:
        super().__init__()
        self.lr, self.gamma = lr, lr_decay ** (1 / total_steps)

    def _build_optimizer(self, params: list[torch.Tensor]) -> None:
        optimizer = torch.optim.Adam(params, lr=self.lr)
        self.optimizers = [optimizer]
        self.schedulers = [torch.optim.lr_scheduler.ExponentialLR(optimizer, self.gamma)]

    def _update(self, objective: Callable[..., tuple[torch.Tensor, Any]], *args: Any,
                **kwargs: Any) -> float:
        """Minimise ``objective(*args, **kwargs)[0]`` by one step of the optimiser and of
        its schedule; return the loss."""
        value, _ = self._minimise(self.optimizers[0], objective, *args, **kwargs)
        self.schedulers[0].step()
        return value


class ModelObjectiveStep(_AdamStep):
    r"""The model's own ELBO estimator, from :meth:`elbo_terms` on the minibatch.

    :math:`-\frac{N}{B} \sum_{i \in \text{batch}} [t^{\mathrm{rec}}_i - \beta \sum_k
    t^{(k)}_i]` with the reconstruction term first in ``model.term_names`` and the KL terms
    after it: the same plate scaling as ``pyro.plate("data", N, subsample=rows)``.
    """

    def __init__(self, model: AmortizedModel, lr: float, lr_decay: float, total_steps: int):
        super().__init__(lr, lr_decay, total_steps)
        self.model = model
        self.name = f"{type(model).__name__}.elbo_terms"
        self.reconstruction, *self.kl_terms = model.term_names
        self._build_optimizer(list(model.parameters()))

    @classmethod
    def build(cls, inputs: StepInputs) -> ModelObjectiveStep:
        return cls(inputs.model, inputs.lr, inputs.lr_decay, inputs.total_steps)

    def objective(self, x: torch.Tensor, n_obs: int) -> tuple[torch.Tensor, None]:
        """The negative ELBO estimate of the minibatch ``x``, scaled to ``n_obs`` rows."""
        terms = self.model.elbo_terms(x)
        kl = sum(terms[name] for name in self.kl_terms)
        elbo = terms[self.reconstruction] - self.beta * kl
        return elbo.sum() * (-n_obs / x.shape[0]), None

    def __call__(self, x: torch.Tensor, *, n_obs: int, subsample: torch.Tensor) -> float:
        return self._update(self.objective, x, n_obs)


def _takes_subsample(fn: Callable) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True  # cannot tell: let Pyro complain if it does not
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    return "subsample" in parameters and "n_obs" in parameters


class PyroStep(_AdamStep):
    """Pyro's ``Trace_ELBO``/``TraceEnum_ELBO`` on the model and guide.

    The optimiser covers every parameter in Pyro's store, found by :meth:`prepare` (and again
    whenever the store grows). With ``optim`` given, Pyro's ``SVI.step`` instead, and the
    state saved is that optimiser's. KL warm-up scales the latent sites of model and guide
    (:class:`ScaleSites`).
    """

    name = "pyro"

    def __init__(self, inputs: StepInputs) -> None:
        super().__init__(inputs.lr, inputs.lr_decay, inputs.total_steps)
        model_fn, guide_fn = inputs.model_fn, inputs.guide_fn
        self.scaler = ScaleSites(inputs.latent_sites) if inputs.latent_sites else None
        if self.scaler is not None:
            model_fn, guide_fn = self.scaler(model_fn), self.scaler(guide_fn)
        self.model_fn, self.guide_fn, self.loss = model_fn, guide_fn, inputs.loss
        self.optim = inputs.optim
        self.svi = SVI(model_fn, guide_fn, self.optim, self.loss) if self.optim else None
        self._known = -1

    @classmethod
    def build(cls, inputs: StepInputs) -> PyroStep:
        for fn, what in ((inputs.model_fn, "model"), (inputs.guide_fn, "guide")):
            if not _takes_subsample(fn):
                raise ValueError(
                    f"minibatches need a {what} that takes n_obs= and subsample= (and puts its "
                    "per-observation sites in pyro.plate(..., n_obs, subsample=subsample)); "
                    f"{type(inputs.model).__name__} does not: fit it without "
                    "batch_size/num_epochs"
                )
        return cls(inputs)

    @property
    def beta(self) -> float:  # type: ignore[override]
        return 1.0 if self.scaler is None else self.scaler.weight

    @beta.setter
    def beta(self, value: float) -> None:
        if self.scaler is not None:
            self.scaler.weight = value

    def prepare(self, x: torch.Tensor, *, n_obs: int, subsample: torch.Tensor) -> None:
        with torch.random.fork_rng(devices=[]), poutine.block():
            self.loss.differentiable_loss(
                self.model_fn, self.guide_fn, x, n_obs=n_obs, subsample=subsample
            )
        if self.svi is None:
            self._collect()

    def _collect(self) -> None:
        store = pyro.get_param_store()
        if len(store) == self._known:
            return
        params = [p for _, p in store.named_parameters()]
        if not self.optimizers:
            self._build_optimizer(params)
        else:
            optimizer = self.optimizers[0]
            seen = {id(p) for group in optimizer.param_groups for p in group["params"]}
            fresh = [p for p in params if id(p) not in seen]
            if fresh:
                lr = optimizer.param_groups[0]["lr"]
                optimizer.add_param_group({"params": fresh, "lr": lr})
        self._known = len(store)

    def objective(self, x: torch.Tensor, n_obs: int,
                  subsample: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The ELBO's differentiable loss on the minibatch (parameters it creates join the
        optimiser)."""
        loss = self.loss.differentiable_loss(
            self.model_fn, self.guide_fn, x, n_obs=n_obs, subsample=subsample
        )
        self._collect()
        return loss, None

    def __call__(self, x: torch.Tensor, *, n_obs: int, subsample: torch.Tensor) -> float:
        if self.svi is not None:
            return self.svi.step(x, n_obs=n_obs, subsample=subsample)
        if not self.optimizers:  # not prepared: create the parameters and the optimiser
            self.prepare(x, n_obs=n_obs, subsample=subsample)
        return self._update(self.objective, x, n_obs, subsample)

    def state_dict(self) -> dict[str, Any]:
        if self.optim is not None:
            return {"pyro_optim": self.optim.get_state()}
        return super().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.optim is not None:
            if "pyro_optim" not in state:
                raise ValueError("the checkpoint holds no Pyro optimiser state")
            self.optim.set_state(state["pyro_optim"])
            return
        super().load_state_dict(state)


#: The generator's adversarial losses of :class:`AdversarialStep`.
ADVERSARIAL_LOSSES = ("non_saturating", "minimax")


class AdversarialStep(Step):
    r"""Alternating updates of a two-player game: ``d_steps`` discriminator steps, then one
    generator step, each player with its own Adam and ``ExponentialLR`` schedule.

    With :math:`D = \sigma(\ell)` the discriminator's probability that a draw is real, the
    discriminator minimises the cross-entropy

    .. math::

        L_D = -\mathbb E_{\text{real}}[\log D] - \mathbb E_{\text{fake}}[\log(1 - D)]
            = -V(D, G)

    on the batch's real and (detached) fake draws; for a fixed generator its minimiser is
    :math:`D^*(x) = p_{\text{data}}(x) / (p_{\text{data}}(x) + p_g(x))`, where
    :math:`V(D^*, G) = 2\,\mathrm{JSD}(p_{\text{data}} \| p_g) - \log 4`
    (Goodfellow et al. 2014, Prop. 1 and Thm. 1). The generator then minimises
    ``adversarial_weight`` times

    * ``"minimax"``: :math:`\mathbb E_{\text{fake}}[\log(1 - D)]`, the game itself, whose
      gradient vanishes while :math:`D` rejects the fakes confidently;
    * ``"non_saturating"`` (default): :math:`-\mathbb E_{\text{fake}}[\log D]`, the same fixed
      point with strong early gradients (Goodfellow et al. 2014, section 3),

    plus the model's own :meth:`~ppl_models.models.protocols.AdversarialModel.generator_terms`
    (a reconstruction cost, an MMD penalty). A model without discriminator parameters (WAE-MMD)
    takes only the generator step. Each call records, per generator step, ``d_loss`` (the mean
    of :math:`L_D` over the ``d_steps`` updates), ``g_loss`` (the unweighted adversarial loss)
    and every generator term in :attr:`records`, which :class:`PlayerLosses` moves into the
    history at the end of each epoch. The value returned to the loop is ``n_obs`` times the
    generator's total loss, so the loop's ``history["elbo"]`` holds its negative per epoch.

    Parameters
    ----------
    model : AdversarialModel
    lr, lr_decay, total_steps
        The generator's learning rate, decayed geometrically to ``lr * lr_decay`` over
        ``total_steps`` generator steps; the discriminator's follows the same schedule.
    d_steps : int
        Discriminator updates per generator update (on the same batch, fresh noise each).
    loss : {"non_saturating", "minimax"}
    d_lr : float, optional
        The discriminator's learning rate (default ``lr``).
    betas : tuple of float
        Adam's moment coefficients, ``(0.5, 0.999)`` as Radford et al. (2016) recommend.
    """

    def __init__(
        self,
        model: AdversarialModel,
        lr: float,
        lr_decay: float,
        total_steps: int,
        *,
        d_steps: int = 1,
        loss: str = "non_saturating",
        d_lr: float | None = None,
        betas: tuple[float, float] = (0.5, 0.999),
    ) -> None:
        super().__init__()
        if not isinstance(model, AdversarialModel):
            raise ValueError(
                f"the adversarial step needs an AdversarialModel (generator, discriminator, "
                f"adversarial_draws, ...); {type(model).__name__} is not one"
            )
        self.model = model
        self.d_steps = check_int(d_steps, "d_steps")
        self.loss = check_choice(loss, "loss", ADVERSARIAL_LOSSES)
        self.d_lr = lr if d_lr is None else check_float(d_lr, "d_lr", minimum=0)
        self.betas = (float(betas[0]), float(betas[1]))
        self.name = f"adversarial({self.loss}, d_steps={self.d_steps})"
        gamma = lr_decay ** (1 / check_int(total_steps, "total_steps"))
        g_params = list(model.generator_parameters())
        d_params = list(model.discriminator_parameters())
        if not g_params:
            raise ValueError(f"{type(model).__name__} has no generator parameters to train")
        shared = {id(p) for p in g_params} & {id(p) for p in d_params}
        if shared:
            raise ValueError(
                f"{type(model).__name__} gives {len(shared)} parameters to both players; "
                "generator_parameters and discriminator_parameters must be disjoint"
            )
        self.generator_optimizer = torch.optim.Adam(g_params, lr=lr, betas=self.betas)
        self.optimizers = [self.generator_optimizer]
        self.discriminator_optimizer: torch.optim.Optimizer | None = None
        if d_params:
            self.discriminator_optimizer = torch.optim.Adam(
                d_params, lr=self.d_lr, betas=self.betas
            )
            self.optimizers.append(self.discriminator_optimizer)
        self.schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma)
                           for o in self.optimizers]
        #: Per-step losses since the history last took them (``PlayerLosses``).
        self.records: dict[str, list[float]] = {}

    @classmethod
    def build(cls, inputs: StepInputs) -> AdversarialStep:
        """The registry's builder: the default game (non-saturating, one discriminator step)."""
        return cls(inputs.model, inputs.lr, inputs.lr_decay, inputs.total_steps)

    def discriminator_loss(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`L_D = \mathrm{softplus}(-\ell_{\text{real}}) + \mathrm{softplus}(\ell_{
        \text{fake}})` averaged over the batch (fake draws detached)."""
        with torch.no_grad():
            draws = self.model.adversarial_draws(x)
        real = self.model.discriminate(draws.real)
        fake = self.model.discriminate(draws.fake)
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def _generator_adversarial(self, logits: torch.Tensor) -> torch.Tensor:
        if self.loss == "non_saturating":
            return F.softplus(-logits).mean()  # -log D
        return -F.softplus(logits).mean()  # log(1 - D)

    def _discriminator_objective(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.discriminator_loss(x), None

    def generator_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator's total loss on ``x`` (its terms, plus ``adversarial_weight`` times
        the adversarial loss), and its parts: the terms and ``g_loss`` (detached)."""
        draws = self.model.adversarial_draws(x)
        terms = self.model.generator_terms(x, draws)
        total = sum(terms.values(), torch.zeros((), dtype=x.dtype))
        parts = {name: value.detach() for name, value in terms.items()}
        if self.discriminator_optimizer is not None:
            g_loss = self._generator_adversarial(self.model.discriminate(draws.fake))
            total = total + self.model.adversarial_weight * g_loss
            parts["g_loss"] = g_loss.detach()
        return total, parts

    def __call__(self, x: torch.Tensor, *, n_obs: int, subsample: torch.Tensor) -> float:
        record: dict[str, float] = {}
        if self.discriminator_optimizer is not None:
            total_d = 0.0
            for _ in range(self.d_steps):
                value, _ = self._minimise(self.discriminator_optimizer,
                                          self._discriminator_objective, x)
                total_d += value
            record["d_loss"] = total_d / self.d_steps
        loss, parts = self._minimise(self.generator_optimizer, self.generator_loss, x)
        if "g_loss" in parts:
            record["g_loss"] = parts.pop("g_loss").item()
        for scheduler in self.schedulers:
            scheduler.step()
        record.update({name: value.item() for name, value in parts.items()})
        for name, value in record.items():
            self.records.setdefault(name, []).append(value)
        return loss * n_obs


#: Registry of step strategies: name -> builder from :class:`StepInputs`.
STEPS: dict[str, Callable[[StepInputs], Step]] = {
    "pyro": PyroStep.build,
    "model": ModelObjectiveStep.build,
    "adversarial": AdversarialStep.build,
}

#: The built-in values of ``objective``: ``"auto"`` (:func:`resolve_objective`) and the steps
#: registered here.
OBJECTIVES = ("auto", *STEPS)


def objectives() -> tuple[str, ...]:
    """What ``objective`` may name now: ``"auto"`` and every step in :data:`STEPS`, including
    those registered after import."""
    return ("auto", *STEPS)


def resolve_objective(
    objective: str, model: Any, *, own_guide: bool, optim: Any, num_particles: int
) -> str:
    """The step to use: ``"model"`` when its conditions hold and ``objective`` is ``"auto"``.

    The model's own estimator needs the model's own guide, an ``nn.Module`` in the
    :class:`~ppl_models.models.protocols.AmortizedModel` role, no Pyro optimiser and one
    particle; ``objective="model"`` without them is refused, naming what is missing.
    """
    if objective not in ("auto", "model"):
        return objective
    reasons = []
    if not own_guide:
        reasons.append("the guide is not the model's own")
    if not (isinstance(model, AmortizedModel) and isinstance(model, torch.nn.Module)):
        reasons.append("the model is not an nn.Module with elbo_terms")
    if optim is not None:
        reasons.append("a Pyro optimiser was given")
    if num_particles != 1:
        reasons.append("num_particles > 1")
    if objective == "model" and reasons:
        raise ValueError(f"objective='model' is not available: {'; '.join(reasons)}")
    return "pyro" if reasons else "model"
