"""``torchrun --nproc_per_node N -m ppl_models fit vae|aae|wae|gan|dcgan|infogan ...``: what
the ranks other than 0 do.

Every rank runs the same command. Rank 0 runs it as in one process (it alone checks and writes
``--out``, the checkpoint, metrics and plots, and shows progress); each other rank loads the
same data, builds the same model and takes part in the same minibatch fit
(:func:`~ppl_models.infer.fit_svi` or :func:`~ppl_models.infer.fit_adversarial`,
data-parallel: the networks in ``DistributedDataParallel``, see
:mod:`ppl_models.infer.trainer.parallel`), then exits without writing anything. A resumed run
gets its checkpoint from rank 0.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["other_adversarial_rank", "other_rank"]


def _launched() -> bool:
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def _joined_as_other_rank() -> bool:
    """Join the process group ``torchrun`` describes (if any) on gloo, since the command line
    trains on the CPU (NCCL takes CUDA tensors only); True on a rank other than 0."""
    from ppl_models.infer.distributed import init_from_env, world

    init_from_env("gloo")
    return world()[0] != 0


def other_rank(args: argparse.Namespace) -> bool:
    """``fit vae``: join the process group ``torchrun`` describes; on a rank other than 0,
    take part in the fit and return True (the caller then returns 0); False on rank 0 or in a
    single process."""
    if args.prior == "gmvae" and _launched():
        # its pretraining, EM start and ELBO stages are not split across ranks here
        raise ValueError("fit vae --prior gmvae does not run under torchrun; "
                         "use --prior standard|mog|vamp, or one process")
    if not _joined_as_other_rank():
        return False
    import torch

    from ppl_models.cli.fit_vae import PRIORS, load_training_data
    from ppl_models.infer import fit_svi

    x_train = load_training_data(args.data, args.likelihood)
    torch.manual_seed(args.seed)
    model = PRIORS[args.prior](x_train.shape[1], args, {"likelihood": args.likelihood})
    fit_svi(model, x_train, batch_size=min(args.batch_size, x_train.shape[0]),
            num_epochs=args.epochs, kl_warmup_epochs=args.kl_warmup, time_limit=args.time_limit,
            seed=args.seed, progress=False)
    return True


def other_adversarial_rank(args: argparse.Namespace) -> bool:
    """``fit aae|wae|gan|dcgan|infogan`` (options already resolved): as :func:`other_rank`,
    the rank's part of :func:`~ppl_models.infer.fit_adversarial`."""
    if not _joined_as_other_rank():
        return False
    import torch

    from ppl_models.cli.fit_adversarial import build_model, fit_options
    from ppl_models.images import load_images
    from ppl_models.infer import fit_adversarial

    x_train, _ = load_images(args.data, split="train")
    torch.manual_seed(args.seed)
    model = build_model(args, x_train.shape[1])
    fit_adversarial(model, x_train, progress=False, **fit_options(args, x_train.shape[0]))
    return True
