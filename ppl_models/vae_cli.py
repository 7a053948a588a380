r"""``ppl-models fit vae``: train a VAE on images, evaluate it on held-out images, draw it.

The model is a :class:`~ppl_models.models.VAE` with a latent prior chosen by ``--prior``
(``standard`` :math:`\mathcal N(0, I)`; ``mog`` a learned mixture of ``--components``
Gaussians; ``vamp`` the VampPrior with ``--components`` pseudo-inputs, Tomczak & Welling
2018) or a :class:`~ppl_models.models.GMVAE` with ``--components`` labels summed out exactly
(Dilokthanakul et al. 2016). It is trained by minibatch SVI (:func:`ppl_models.infer.fit_svi`)
on the ``train`` split and scored on the ``test`` split by the ELBO and the importance-weighted
bound of Burda et al. (2016) with ``--particles`` samples. Written into ``--out``:
``metrics.json``, ``checkpoint/checkpoint.pt`` and the PNGs of
:func:`ppl_models.diagnostics.save_vae_plots`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_DATA", "PRIORS", "run"]

#: Data set of ``fit vae`` when ``--data`` is not given.
DEFAULT_DATA = "digits"


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

    return GMVAE(input_dim, args.latent_dim, args.components, **options)


#: ``--prior`` -> builder(input_dim, args, options) -> model.
PRIORS: dict[str, Callable[[int, argparse.Namespace, dict], Any]] = {
    "standard": _standard,
    "mog": _mog,
    "vamp": _vamp,
    "gmvae": _gmvae,
}

#: How images are read for each likelihood: binary pixels for ``bernoulli``.
_BINARIZE: dict[str, str | None] = {
    "bernoulli": "threshold",
    "continuous_bernoulli": None,
    "gaussian": None,
}


def _load(source: str, likelihood: str):
    from ppl_models.images import load_images

    binarize = _BINARIZE[likelihood]
    x_train, _ = load_images(source, split="train", binarize=binarize)
    x_test, y_test = load_images(source, split="test", binarize=binarize)
    return x_train, x_test, y_test


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def run(args: argparse.Namespace) -> int:
    """Fit, evaluate and draw a VAE as the parsed ``fit vae`` arguments say; return 0."""
    import torch

    from ppl_models.diagnostics import assign_clusters, cluster_accuracy, save_vae_plots
    from ppl_models.infer import elbo_terms, fit_svi, log_marginal_likelihood

    if args.likelihood not in _BINARIZE:
        raise ValueError(
            f"unknown likelihood {args.likelihood!r}; choose one of {sorted(_BINARIZE)}"
        )
    source = args.data or DEFAULT_DATA
    x_train, x_test, y_test = _load(source, args.likelihood)
    torch.manual_seed(args.seed)
    model = PRIORS[args.prior](x_train.shape[1], args, {"likelihood": args.likelihood})
    out = args.out or Path("runs") / f"vae-{args.prior}"
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = fit_svi(
            model,
            x_train,
            batch_size=min(args.batch_size, x_train.shape[0]),
            num_epochs=args.epochs,
            kl_warmup_epochs=args.kl_warmup,
            time_limit=args.time_limit,
            checkpoint_dir=out / "checkpoint",
            seed=args.seed,
            progress=not args.quiet,
        )
    for w in caught:
        print(f"ppl-models: warning: {w.message}", file=sys.stderr)
    model.eval()
    terms = elbo_terms(model, x_test, seed=args.seed)
    loglik = log_marginal_likelihood(model, x_test, args.particles, seed=args.seed,
                                     progress=not args.quiet)
    clusters = assign_clusters(model, x_test)
    accuracy = None
    if clusters is not None and y_test is not None:
        accuracy = cluster_accuracy(clusters, y_test)
    epoch_seconds = result.info.get("epoch_seconds") or [result.fit_seconds]
    figures: dict[str, Any] = {
        "model": "vae",
        "prior": args.prior,
        "data": source,
        "likelihood": args.likelihood,
        "latent_dim": args.latent_dim,
        "n_components": None if args.prior == "standard" else args.components,
        "n_train": int(x_train.shape[0]),
        "n_test": int(x_test.shape[0]),
        "n_features": int(x_train.shape[1]),
        "batch_size": min(args.batch_size, x_train.shape[0]),
        "n_epochs": int(result.info.get("num_epochs", result.n_iter)),
        "kl_warmup_epochs": args.kl_warmup,
        "time_limit": args.time_limit,
        "stopped_by": result.info.get("stopped_by"),
        "train_elbo": result.history["elbo"][-1],
        "test_elbo": terms["elbo"],
        "test_elbo_terms": {k: v for k, v in terms.items() if k != "elbo"},
        "test_log_likelihood": loglik,
        "test_log_likelihood_particles": args.particles,
        "cluster_accuracy": accuracy,
        "epoch_seconds": statistics.mean(epoch_seconds),
        "fit_seconds": result.fit_seconds,
        "seed": args.seed,
        "checkpoint": result.info.get("checkpoint"),
    }
    figures = {k: _finite(v) for k, v in figures.items()}
    (out / "metrics.json").write_text(json.dumps(figures, indent=2) + "\n")
    written = [] if args.no_plots else save_vae_plots(model, x_test, y_test, out)
    if not args.quiet:
        accuracy_text = "" if accuracy is None else f", cluster accuracy {accuracy:.3f}"
        print(
            f"vae ({args.prior} prior) on {source}: test ELBO {terms['elbo']:.2f}, "
            f"log p(x) >= {loglik:.2f} nats (K={args.particles}){accuracy_text}; "
            f"{figures['n_epochs']} epochs, {figures['epoch_seconds']:.2f} s/epoch"
        )
        print(f"wrote {out}/: metrics.json checkpoint/ " + " ".join(p.name for p in written))
    return 0
