"""The minibatch trainer: a configuration value, a step strategy from a registry, callbacks.

================== ==============================================================================
module             job
================== ==============================================================================
``config``         :class:`TrainerConfig`, the frozen settings (checked on resume)
``steps``          :class:`Step` and the registry :data:`STEPS` (Pyro's ELBO, the model's own,
                   the adversarial game)
``batches``        :class:`Batches`: seeded shuffled minibatches, transform, evaluation batch
``callbacks``      early stopping, ELBO terms, checkpoints, the time limit, a user's function
``loop``           :class:`Trainer`: the epoch loop and its state for exact resume
``parallel``       :class:`ParallelUpdate`: one optimiser's data-parallel update (DDP)
================== ==============================================================================

A new training scheme is a new entry in :data:`STEPS`, not a new loop: the adversarial game
(:class:`AdversarialStep`, several optimisers, ``d_steps`` per generator step) is one.

Under ``torchrun`` the same loop trains data-parallel: :class:`Batches` gives each rank its
piece of every global batch, the model's networks train in ``DistributedDataParallel`` and
Pyro's global parameters are summed by hand, each rank's loss weighted by its share of the
batch (see :class:`Trainer` and :mod:`ppl_models.infer.trainer.parallel`).
"""

from ppl_models.infer.trainer.batches import Batches
from ppl_models.infer.trainer.callbacks import (
    Callback,
    CheckpointWriter,
    EarlyStopping,
    ElboTerms,
    TimeLimit,
    UserCallback,
)
from ppl_models.infer.trainer.config import TrainerConfig
from ppl_models.infer.trainer.loop import Trainer, TrainingRun
from ppl_models.infer.trainer.parallel import ParallelUpdate
from ppl_models.infer.trainer.steps import (
    OBJECTIVES,
    STEPS,
    AdversarialStep,
    ModelObjectiveStep,
    PyroStep,
    ScaleSites,
    Step,
    StepInputs,
    kl_weight,
    objectives,
    resolve_objective,
)

__all__ = [
    "OBJECTIVES",
    "STEPS",
    "AdversarialStep",
    "Batches",
    "Callback",
    "CheckpointWriter",
    "EarlyStopping",
    "ElboTerms",
    "ModelObjectiveStep",
    "ParallelUpdate",
    "PyroStep",
    "ScaleSites",
    "Step",
    "StepInputs",
    "TimeLimit",
    "Trainer",
    "TrainerConfig",
    "TrainingRun",
    "UserCallback",
    "kl_weight",
    "objectives",
    "resolve_objective",
]
