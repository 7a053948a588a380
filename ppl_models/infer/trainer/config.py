"""The configuration value of the minibatch trainer: what decides a fit's numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ppl_models._shared.checks import check_float, check_int
from ppl_models.infer.checkpoint import MAY_GROW
from ppl_models.infer.trainer.steps import objectives

__all__ = ["TrainerConfig"]

_NOT_COMPARED = {"compare": False}


@dataclass(frozen=True)
class TrainerConfig:
    r"""Settings of a minibatch fit (see :func:`ppl_models.infer.fit_svi` for their meaning).

    Attributes
    ----------
    batch_size : int
        Rows per step (clipped to the number of rows).
    num_epochs : int
        Passes over the data.
    lr, lr_decay : float
        Adam's initial learning rate, decayed geometrically (``ExponentialLR`` every step) to
        ``lr * lr_decay`` at the last step of ``num_epochs``.
    kl_warmup_epochs : int
        KL weight :math:`\beta_e = \min(1, e / W)` in epoch ``e`` (0-based).
    objective : {"auto", "pyro", "model"} or a name in ``STEPS``
        The step strategy.
    num_particles : int
        Monte-Carlo particles per ELBO estimate (the ``"pyro"`` step).
    early_stop, window, min_delta
        Stop when the ELBO trace is flat: its trend over the last two windows of ``window``
        epochs changes by at most ``min_delta`` per window plus two standard errors
        (:func:`ppl_models.infer.stopping.elbo_convergence`, which also sets ``converged``).
    seed : int
        Seeds the data order, the binarization, the evaluation batch and Pyro's RNG.
    time_limit : float or None
        Seconds of training (of this session) after which no new epoch starts. Not compared
        when resuming: a time-limited run may be continued with another limit.
    """

    batch_size: int
    num_epochs: int = 10
    lr: float = 1e-3
    lr_decay: float = 0.1
    kl_warmup_epochs: int = 0
    objective: str = "auto"
    num_particles: int = 1
    early_stop: bool = False
    window: int = 5
    min_delta: float = 1e-4
    seed: int = 0
    time_limit: float | None = field(default=None, metadata=_NOT_COMPARED)

    def __post_init__(self) -> None:
        if self.objective not in objectives():
            raise ValueError(f"objective must be one of {objectives()}; got {self.objective!r}")
        check_int(self.batch_size, "batch_size")
        check_int(self.num_epochs, "num_epochs")
        check_int(self.window, "window")
        check_int(self.num_particles, "num_particles")
        check_int(self.kl_warmup_epochs, "kl_warmup_epochs", minimum=0)
        check_float(self.lr_decay, "lr_decay", minimum=0, maximum=1, strict_minimum=True)
        check_float(self.lr, "lr", minimum=0)
        if self.time_limit is not None:
            check_float(self.time_limit, "time_limit", minimum=0, strict_minimum=True)

    def compared(self) -> dict[str, Any]:
        """The fields a resumed fit must share with its checkpoint, as plain values.

        With constant learning rates (``lr_decay=1``) nothing in an epoch depends on
        ``num_epochs`` (the KL warm-up counts epochs from the start), so the first E epochs of
        a longer fit are those of a fit of E epochs: ``num_epochs`` is then listed under
        :data:`~ppl_models.infer.checkpoint.MAY_GROW`, and a resume may extend the fit. With
        a decay the schedule spreads over ``num_epochs``, which must stay the same.
        """
        values = asdict(self)
        compared = {f.name: values[f.name] for f in fields(self)
                    if f.metadata.get("compare", True)}
        if self.lr_decay == 1:
            compared[MAY_GROW] = ["num_epochs"]
        return compared
