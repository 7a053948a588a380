r"""``ppl-models fit vae``: train a VAE on images, evaluate it on held-out images, draw it.

The model is a :class:`~ppl_models.models.VAE` with a latent prior chosen by ``--prior``
(``standard`` :math:`\mathcal N(0, I)`; ``mog`` a learned mixture of ``--components``
Gaussians; ``vamp`` the VampPrior with ``--components`` pseudo-inputs, Tomczak & Welling
2018) or a :class:`~ppl_models.models.GMVAE` with ``--components`` labels summed out exactly
(Dilokthanakul et al. 2016), in VaDE's factorisation and recipe (Jiang et al. 2017,
:func:`ppl_models.infer.fit_clustering_vae`: ``--pretrain-epochs`` of autoencoder
pretraining, the mixture started by EM on the codes (or, ``--start graph``, by the codes'
nearest-neighbour graph), then the ELBO, optionally with ``--free-bits`` and
``--balance``). It is trained by minibatch SVI
(:func:`ppl_models.infer.fit_svi`) on the ``train`` split and scored on the ``test`` split
by the ELBO and the importance-weighted bound of Burda et al. (2016) with ``--particles``
samples. Written into ``--out``: ``metrics.json``, ``checkpoint/checkpoint.pt`` and the PNGs of
:func:`ppl_models.diagnostics.save_vae_plots`.

The checkpoint is written after every epoch into the partial folder beside ``--out``
(:mod:`ppl_models.cli.output`); a run interrupted in any way leaves it there, and
``--resume`` continues it so that the run ends with the numbers of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ppl_models.cli.arguments import (
    add_output_options,
    non_negative_int,
    positive_float,
    positive_int,
    progress_of,
    show_defaults,
)
from ppl_models.cli.output import output_folder
from ppl_models.cli.quality_metrics import add_quality_options, quality_metrics

__all__ = ["DEFAULT_DATA", "PRIORS", "add_parser", "run"]

#: Data set of ``fit vae`` when ``--data`` is not given.
DEFAULT_DATA = "digits"

#: A rough size of the outputs, for the free-space check: the checkpoint (networks and Adam's
#: two moments: 3 x 4 bytes per weight, a few MB for MNIST-sized networks) and the PNGs.
NEED_BYTES = 50_000_000


def non_negative_float(text: str) -> float:
    """An ``argparse`` type: a finite number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0; got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text}")
    return value


def _standard(input_dim: int, args: argparse.Namespace, options: dict) -> Any:
    from ppl_models.models import VAE

    return VAE(input_dim, args.latent_dim, prior="standard", **options)


def _mog(input_dim: int, args: argparse.Namespace, options: dict) -> Any:
    from ppl_models.models import VAE, MixtureOfGaussiansPrior

    return VAE(input_dim, args.latent_dim, prior=MixtureOfGaussiansPrior(args.components),
               **options)


def _vamp(input_dim: int, args: argparse.Namespace, options: dict) -> Any:
    from ppl_models.models import VAE, VampPrior

    return VAE(input_dim, args.latent_dim, prior=VampPrior(args.components), **options)


def _gmvae(input_dim: int, args: argparse.Namespace, options: dict) -> Any:
    from ppl_models.models import GMVAE

    # free bits and balance shape only the training objective: a model rebuilt from a
    # namespace without them (to load a checkpoint) has the same structure
    given = vars(args)
    return GMVAE(input_dim, args.latent_dim, args.components, conditional_encoder=False,
                 free_bits=given.get("free_bits", 0.0),
                 balance_weight=given.get("balance", 0.0), **options)


#: ``--prior`` -> builder(input_dim, args, options) -> model.
PRIORS: dict[str, Callable[[int, argparse.Namespace, dict], Any]] = {
    "standard": _standard,
    "mog": _mog,
    "vamp": _vamp,
    "gmvae": _gmvae,
}

#: How images are read for a likelihood: thresholded to binary pixels for ``bernoulli``,
#: grey levels in [0, 1] for every other likelihood of the registry.
_BINARIZE: dict[str, str] = {"bernoulli": "threshold"}


def add_parser(subparsers: Any, name: str = "vae") -> argparse.ArgumentParser:
    """Register ``fit vae`` on the ``fit`` subparsers; returns its parser."""
    from ppl_models.models.vae import LIKELIHOODS

    parser = subparsers.add_parser(
        name,
        prog=f"ppl-models fit {name}",
        help="a VAE (standard, mixture, VampPrior or GMVAE prior) by minibatch SVI",
        description="Train a VAE on images, score it on the test split by the ELBO and the "
        "importance-weighted bound, and write metrics.json, checkpoint/ and plots.",
    )
    parser.add_argument(
        "--data", metavar="SOURCE", default=DEFAULT_DATA,
        help=f"{DEFAULT_DATA} (default), mnist:DIR, fashion-mnist:DIR or binarized-mnist:PATH",
    )
    parser.add_argument("--prior", default="standard", choices=sorted(PRIORS),
                        help="latent prior (default standard)")
    parser.add_argument("--components", metavar="K", type=positive_int, default=10,
                        help="mog components, vamp pseudo-inputs or gmvae labels (default 10)")
    parser.add_argument("--latent-dim", metavar="D", type=positive_int, default=10,
                        help="size of the code (default 10)")
    parser.add_argument("--epochs", metavar="N", type=positive_int, default=20,
                        help="training epochs (default 20)")
    parser.add_argument("--batch-size", metavar="B", type=positive_int, default=100,
                        help="minibatch size (default 100)")
    parser.add_argument("--likelihood", default="bernoulli", choices=sorted(LIKELIHOODS),
                        help="pixel density (default bernoulli, on thresholded pixels)")
    parser.add_argument("--particles", metavar="N", type=positive_int, default=1000,
                        help="importance samples of the test log-likelihood (default 1000)")
    parser.add_argument("--kl-warmup", metavar="N", type=non_negative_int, default=0,
                        help="epochs of KL warm-up (default 0)")
    parser.add_argument("--pretrain-epochs", metavar="N", type=non_negative_int, default=50,
                        help="gmvae: epochs of autoencoder pretraining before the mixture is "
                             "started by EM on the codes (VaDE's recipe; default 50)")
    parser.add_argument("--start", choices=("em", "graph"), default="em",
                        help="gmvae: start of the mixture, em (EM on the codes, VaDE's; "
                             "default em) or graph (the codes' nearest-neighbour graph with a "
                             "label warm start, "
                             "the MNIST benchmark's; worse on the bundled 8x8 digits: 0.64 "
                             "against 0.73)")
    parser.add_argument("--free-bits", metavar="NATS", type=non_negative_float, default=0.0,
                        help="gmvae: minimum KL of the code per image (default 0, off)")
    parser.add_argument("--balance", metavar="W", type=non_negative_float, default=0.0,
                        help="gmvae: weight of the entropy of the batch's cluster shares "
                             "(default 0, off)")
    parser.add_argument("--time-limit", type=positive_float, metavar="SECONDS",
                        help="start no new epoch after this many seconds of training")
    parser.add_argument("--seed", metavar="S", type=non_negative_int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_quality_options(parser)
    add_output_options(parser, default="runs/vae-PRIOR", resumable=True)
    parser.set_defaults(run=run, model=name)
    return show_defaults(parser)


def _load(source: str, likelihood: str):
    from ppl_models.images import load_images

    binarize = _BINARIZE.get(likelihood)
    x_train, _ = load_images(source, split="train", binarize=binarize)
    x_test, y_test = load_images(source, split="test", binarize=binarize)
    return x_train, x_test, y_test


def load_training_data(source: str, likelihood: str):
    """The training images of ``source`` as ``fit vae`` reads them."""
    return _load(source, likelihood)[0]


def run(args: argparse.Namespace) -> int:
    """Fit, evaluate and draw a VAE as the parsed ``fit vae`` arguments say; return 0 (under
    ``torchrun``, see :mod:`ppl_models.cli.data_parallel`)."""
    import torch

    from ppl_models.cli.data_parallel import other_rank

    if other_rank(args):
        return 0

    from ppl_models._shared.jsonsafe import to_json
    from ppl_models._shared.warning_capture import captured_warnings
    from ppl_models.cli.vae_amortized import write_amortized
    from ppl_models.diagnostics import (
        active_units,
        assign_clusters,
        cluster_accuracy,
        plot_objective,
        save_vae_plots,
    )
    from ppl_models.infer import (
        elbo_terms,
        fit_clustering_vae,
        fit_svi,
        log_marginal_likelihood,
    )
    from ppl_models.infer.resources import check_memory, vae_memory

    out = args.out or Path("runs") / f"vae-{args.prior}"
    progress = progress_of(args)
    with output_folder(out, need_bytes=NEED_BYTES, resume=args.resume,
                       overwrite=args.overwrite, resumable=True) as staging:
        x_train, x_test, y_test = _load(args.data, args.likelihood)
        torch.manual_seed(args.seed)
        model = PRIORS[args.prior](x_train.shape[1], args, {"likelihood": args.likelihood})
        batch_size = min(args.batch_size, x_train.shape[0])
        check_memory(vae_memory(model, x_train.shape[0], batch_size=batch_size,
                                n_test=x_test.shape[0], particles=args.particles))
        if not args.quiet:
            print(f"ppl-models: VAE: {args.epochs} epochs x {-(-x_train.shape[0] // batch_size)}"
                  f" steps (batch {batch_size} of {x_train.shape[0]} images), then "
                  f"{args.particles} importance samples per test image", file=sys.stderr)
        with captured_warnings():
            if args.prior == "gmvae":
                # VaDE's recipe: pretraining, EM (or graph) start on the codes, then the ELBO
                result = fit_clustering_vae(
                    model, x_train, pretrain_epochs=args.pretrain_epochs,
                    num_epochs=args.epochs, batch_size=batch_size, start=args.start,
                    kl_warmup_epochs=args.kl_warmup, time_limit=args.time_limit,
                    checkpoint_dir=staging.checkpoint_dir, seed=args.seed, progress=progress,
                    resume=staging.resume,
                )
            else:
                result = fit_svi(
                    model,
                    x_train,
                    batch_size=batch_size,
                    num_epochs=args.epochs,
                    kl_warmup_epochs=args.kl_warmup,
                    time_limit=args.time_limit,
                    checkpoint_dir=staging.checkpoint_dir,
                    seed=args.seed,
                    progress=progress,
                    resume=staging.resume,
                )
        model.eval()
        terms = elbo_terms(model, x_test, seed=args.seed)
        # the encoder diagnostics draw the test images' importance samples once; their mean
        # bound is log_marginal_likelihood's (same seed and batches), computed here otherwise
        amortized, loglik = write_amortized(
            model, x_test, staging.path, particles=args.particles, seed=args.seed,
            progress=progress, plots=not args.no_plots)
        if loglik is None:
            loglik = log_marginal_likelihood(model, x_test, args.particles, seed=args.seed,
                                             progress=progress)
        clusters = assign_clusters(model, x_test)
        accuracy = None
        if clusters is not None and y_test is not None:
            accuracy = cluster_accuracy(clusters, y_test)
        with torch.no_grad():
            units = active_units(model.code_mean(x_test))
        collapse = units.warning()
        epoch_seconds = result.info.get("epoch_seconds") or [result.fit_seconds]
        checkpoint = result.info.get("checkpoint")
        figures: dict[str, Any] = {
            "model": "vae",
            "prior": args.prior,
            "data": args.data,
            "likelihood": args.likelihood,
            "latent_dim": args.latent_dim,
            "n_components": None if args.prior == "standard" else args.components,
            "n_train": int(x_train.shape[0]),
            "n_test": int(x_test.shape[0]),
            "n_features": int(x_train.shape[1]),
            "batch_size": batch_size,
            "n_epochs": int(result.info.get("num_epochs", result.n_iter)),
            "kl_warmup_epochs": args.kl_warmup,
            "pretrain_epochs": args.pretrain_epochs if args.prior == "gmvae" else None,
            "time_limit": args.time_limit,
            "stopped_by": result.info.get("stopped_by"),
            "resumed": staging.resume,
            "train_elbo": result.history["elbo"][-1],
            "test_elbo": terms["elbo"],
            "test_elbo_terms": {k: v for k, v in terms.items() if k != "elbo"},
            "test_log_likelihood": loglik,
            "test_log_likelihood_particles": args.particles,
            "cluster_accuracy": accuracy,
            "active_units": units.count,
            "active_unit_variances": units.variances.tolist(),
            "active_unit_threshold": units.threshold,
            "epoch_seconds": statistics.mean(epoch_seconds),
            "fit_seconds": result.fit_seconds,
            "seed": args.seed,
            # relative to the folder, which moves into place at the end
            "checkpoint": None if checkpoint is None
            else os.path.relpath(checkpoint, staging.path),
        }
        figures["amortized"] = amortized
        figures.update(quality_metrics(model, args, staging.path))
        (staging.path / "metrics.json").write_text(to_json(figures))
        written = [] if args.no_plots else save_vae_plots(model, x_test, y_test, staging.path)
        if not args.no_plots:
            curve = staging.path / "training_curve.png"
            plot_objective(result, curve)
            written.append(curve)
    if collapse is not None:
        print(f"ppl-models: warning: {collapse}", file=sys.stderr)
    if not args.quiet:
        accuracy_text = "" if accuracy is None else f", cluster accuracy {accuracy:.3f}"
        print(
            f"vae ({args.prior} prior) on {args.data}: test ELBO {terms['elbo']:.2f}, "
            f"log p(x) >= {loglik:.2f} nats (K={args.particles}){accuracy_text}; "
            f"{figures['n_epochs']} epochs, {figures['epoch_seconds']:.2f} s/epoch"
        )
        print(f"wrote {staging.out}/: metrics.json checkpoint/ "
              + " ".join(p.name for p in written))
    return 0
