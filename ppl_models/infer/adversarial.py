r"""Adversarial training of the GAN / AAE / WAE families on the minibatch trainer.

:func:`fit_adversarial` is the driver: the same :class:`~ppl_models.infer.trainer.Trainer`
(epochs, seeded batches, progress bar, callbacks, checkpoints, exact resume) as minibatch SVI,
with the step strategy :class:`~ppl_models.infer.trainer.steps.AdversarialStep` from the
registry, and :class:`PlayerLosses`, the callback that moves both players' per-step losses into
the history.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch

from ppl_models._shared.progress import show_progress
from ppl_models.infer import distributed
from ppl_models.infer.checkpoint import open_checkpoint_dir
from ppl_models.infer.result import FitResult
from ppl_models.infer.trainer import (
    Batches,
    Callback,
    CheckpointWriter,
    EarlyStopping,
    TimeLimit,
    Trainer,
    TrainerConfig,
    UserCallback,
)
from ppl_models.infer.trainer.steps import AdversarialStep
from ppl_models.models.protocols import AdversarialModel, LatentModel

__all__ = ["PlayerLosses", "fit_adversarial"]

History = dict[str, list[float]]


class PlayerLosses(Callback):
    """Move the step's per-step losses (``d_loss``, ``g_loss``, the generator's terms) into the
    history at the end of each epoch, before the checkpoint is written."""

    name = "player_losses"

    def __init__(self, step: AdversarialStep) -> None:
        self.step = step

    def on_epoch_end(self, epoch: int, history: History) -> bool:
        for name, values in self.step.records.items():
            history.setdefault(name, []).extend(values)
        self.step.records.clear()
        return False


def fit_adversarial(
    model: AdversarialModel,
    data: torch.Tensor,
    *,
    batch_size: int = 64,
    num_epochs: int = 10,
    lr: float = 2e-4,
    lr_decay: float = 1.0,
    d_lr: float | None = None,
    d_steps: int = 1,
    loss: str = "non_saturating",
    betas: tuple[float, float] = (0.5, 0.999),
    early_stop: bool = False,
    window: int = 5,
    min_delta: float = 1e-4,
    seed: int = 0,
    progress: bool | None = None,
    time_limit: float | None = None,
    callback: Callable[[int, History], bool | None] | Callback | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    columns: list[str] | None = None,
) -> FitResult:
    r"""Fit an adversarial model by alternating discriminator and generator updates.

    Each step takes a shuffled minibatch, makes ``d_steps`` Adam updates of the discriminator
    on :math:`L_D = -\mathbb E_{\text{real}}\log D - \mathbb E_{\text{fake}} \log(1 - D)`, then
    one of the generator on its adversarial loss (``loss``) and its own terms
    (:class:`~ppl_models.infer.trainer.steps.AdversarialStep`; Goodfellow et al. 2014,
    Algorithm 1). The networks are the model's (initialised when it was built); nothing is
    in Pyro's parameter store.

    Parameters
    ----------
    model : AdversarialModel
        E.g. :class:`~ppl_models.models.gan.GAN`, :class:`~ppl_models.models.gan.DCGAN`,
        :class:`~ppl_models.models.infogan.InfoGAN`,
        :class:`~ppl_models.models.adversarial_autoencoder.AdversarialAutoencoder`,
        :class:`~ppl_models.models.adversarial_autoencoder.WassersteinAutoencoder`.
    data : Tensor (N, D)
    batch_size, num_epochs, lr, lr_decay, early_stop, window, min_delta, seed, time_limit
        As in :class:`~ppl_models.infer.trainer.TrainerConfig` (``lr_decay=1``: constant
        rates); early stopping watches ``history["elbo"]``, the negative generator loss.
    d_lr : float, optional
        The discriminator's learning rate (default ``lr``).
    d_steps : int
        Discriminator updates per generator update.
    loss : {"non_saturating", "minimax"}
        The generator's adversarial loss: :math:`-\log D(G(z))` or :math:`\log(1 - D(G(z)))`.
    betas : tuple of float
        Adam's coefficients for both players.
    progress, callback, checkpoint_dir, resume, overwrite, columns
        As in :func:`ppl_models.infer.fit_svi` (minibatch mode): the checkpoint holds both
        players' networks, optimisers and schedulers, the RNG states and the history, and a
        resumed fit ends with the numbers of an uninterrupted one.

    Returns
    -------
    FitResult
        ``method="adversarial"``; ``history`` holds per epoch ``elbo`` (the negative generator
        loss per observation, averaged over the epoch) and ``beta`` (always 1), and per
        generator step ``d_loss`` (the discriminator's cross-entropy :math:`L_D`, i.e.
        :math:`-V(D, G)`), ``g_loss`` (the adversarial loss) and each generator term
        (``reconstruction``, ``mmd``, ...). ``params`` is empty: the fitted networks live in
        the model object and in the checkpoint.
    """
    if not isinstance(model, AdversarialModel):
        raise ValueError(
            f"fit_adversarial needs an AdversarialModel; {type(model).__name__} is not one "
            "(fit it with fit_svi)"
        )
    if (resume or overwrite) and checkpoint_dir is None:
        raise ValueError("resume and overwrite need checkpoint_dir")
    if callback is not None and not (callable(callback) or isinstance(callback, Callback)):
        raise ValueError(f"callback must be callable; got {callback!r}")
    if isinstance(model, LatentModel):
        data = model.validate(data)
    config = TrainerConfig(
        batch_size=batch_size, num_epochs=num_epochs, lr=lr, lr_decay=lr_decay,
        objective="adversarial", early_stop=early_stop, window=window, min_delta=min_delta,
        seed=int(seed), time_limit=time_limit,
    )
    directory = None
    if checkpoint_dir is not None and distributed.world()[0] == 0:  # rank 0 writes
        directory = open_checkpoint_dir(checkpoint_dir, mode="minibatch", resume=resume,
                                        overwrite=overwrite)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    batches = Batches(data, config.batch_size, config.seed)
    step = AdversarialStep(model, lr, lr_decay, len(batches) * num_epochs, d_steps=d_steps,
                           loss=loss, d_lr=d_lr, betas=betas)
    identity = {"model": type(model).__name__, "objective": step.name, "d_lr": step.d_lr,
                "betas": list(step.betas)}
    trainer = Trainer(model, step, batches, config, identity)
    callbacks: list[Callback] = [PlayerLosses(step)]
    if directory is not None:
        callbacks.append(CheckpointWriter(directory, trainer.state_dict))
    if early_stop:
        callbacks.append(EarlyStopping(window, min_delta))
    if callback is not None:
        callbacks.append(callback if isinstance(callback, Callback) else UserCallback(callback))
    if time_limit is not None:
        callbacks.append(TimeLimit(time_limit))
    trainer.callbacks = callbacks
    resumed = None if directory is None else directory.resumed
    if trainer.world > 1:  # rank 0's checkpoint, sent to every rank
        resumed = distributed.broadcast_object(resumed)
    if resumed is not None:
        where = Path("rank 0's checkpoint") if directory is None else directory.file
        trainer.load_state_dict(resumed, where)
    run = trainer.fit(progress=show_progress(progress),
                      desc=f"adversarial ({type(model).__name__})")
    info: dict[str, Any] = {
        **run.info,
        "loss": loss,
        "d_steps": step.d_steps,
        "d_lr": step.d_lr,
        "checkpoint": None if directory is None else str(directory.file),
    }
    return FitResult(
        model=model, method="adversarial", data=data, params={}, draws=None,
        history=run.history, converged=run.converged, n_iter=len(run.history["elbo"]),
        seed=config.seed, fit_seconds=run.fit_seconds, info=info,
        columns=list(columns) if columns is not None else [],
    )
