r"""``ppl-models fit aae|wae|gan|dcgan|infogan``: adversarial training on images, then plots.

The models are :class:`~ppl_models.models.adversarial_autoencoder.AdversarialAutoencoder`
(Makhzani et al. 2016), :class:`~ppl_models.models.adversarial_autoencoder.WassersteinAutoencoder`
(Tolstikhin et al. 2018, ``--penalty mmd|gan``), :class:`~ppl_models.models.gan.GAN`
(Goodfellow et al. 2014), :class:`~ppl_models.models.gan.DCGAN` (Radford et al. 2016; 28x28
images only) and :class:`~ppl_models.models.infogan.InfoGAN` (Chen et al. 2016), trained by
:func:`ppl_models.infer.fit_adversarial` on the ``train`` split. Written into ``--out``:
``metrics.json``, ``fit/`` (:meth:`~ppl_models.infer.FitResult.save`),
``checkpoint/checkpoint.pt`` (for ``--resume``) and ``samples.png``, ``training_curve.png``,
plus ``latent_map.png`` (aae, wae) or ``traversals.png`` (infogan), and the digit classifier
of the sample-quality measures, ``classifier.pt`` (unless ``--classifier PATH`` names it).

For the autoencoders, ``metrics.json`` holds the unbiased
:math:`\widehat{\mathrm{MMD}}^2_u` between the codes :math:`E(x)` of the test images and as
many prior draws (seeded by ``--seed``), with the WAE's own kernel, or for the AAE the IMQ
kernel at the WAE's default scale :math:`2 L \bar\sigma_z^2`.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
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

__all__ = [
    "DEFAULTS", "MODELS", "PRIORS", "add_parser", "build_model", "code_mmd",
    "fit_options", "last_epoch_mean", "make_prior", "resolve_options", "run",
]

#: Data set when ``--data`` is not given.
DEFAULT_DATA = "digits"

#: Rough size of the outputs for the free-space check (checkpoint, fit/, PNGs).
NEED_BYTES = 50_000_000

#: The ``fit`` targets of this module and their one-line help.
MODELS: dict[str, str] = {
    "aae": "an adversarial autoencoder (Makhzani et al. 2016)",
    "wae": "a Wasserstein autoencoder, WAE-MMD or WAE-GAN (Tolstikhin et al. 2018)",
    "gan": "a GAN with MLP networks (Goodfellow et al. 2014)",
    "dcgan": "a DCGAN for 28x28 images (Radford et al. 2016)",
    "infogan": "an InfoGAN with a categorical and two continuous codes (Chen et al. 2016)",
}

#: ``--prior`` choices of aae / wae.
PRIORS: tuple[str, ...] = ("normal", "mog", "uniform")

#: Option -> (default, models it applies to). Options left at ``None`` by the parser take
#: these defaults; one given for a model outside its set is refused.
DEFAULTS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "prior": ("normal", ("aae", "wae")),
    "encoder": ("deterministic", ("aae", "wae")),
    "penalty": ("mmd", ("wae",)),
    "hidden": (128, ("aae", "wae", "gan", "infogan")),
    "d_steps": (1, ("aae", "wae", "gan", "dcgan", "infogan")),
    "loss": ("non_saturating", ("aae", "wae", "gan", "dcgan", "infogan")),
}

#: ``--latent-dim`` default by model (the DCGAN and InfoGAN papers' noise sizes are 100 / 62;
#: smaller here for 8x8 digits).
LATENT_DIMS: dict[str, int] = {"aae": 2, "wae": 2, "gan": 10, "dcgan": 100, "infogan": 10}

#: Components, radius and scale of the ``mog`` prior: 10 Gaussians on a circle in the first two
#: coordinates (Makhzani et al. 2016, Fig. 4), standard deviation 0.5 in every coordinate.
MOG_COMPONENTS, MOG_RADIUS, MOG_SCALE = 10, 2.0, 0.5

DCGAN_PIXELS = 784


def make_prior(name: str, latent_dim: int) -> Any:
    r"""The ``--prior`` distribution over codes of size ``latent_dim``; ``None`` for
    ``normal`` (the model's default :math:`\mathcal N(0, I)`), :math:`\mathcal U(-1, 1)^L` for
    ``uniform``, and for ``mog`` :data:`MOG_COMPONENTS` equally weighted Gaussians with means
    :math:`r(\cos 2\pi k/K, \sin 2\pi k/K, 0, \dots)` (one coordinate: :math:`r \cos`)."""
    import pyro.distributions as dist
    import torch

    if name == "normal":
        return None
    if name == "uniform":
        return dist.Uniform(-torch.ones(latent_dim), torch.ones(latent_dim)).to_event(1)
    if name != "mog":
        raise ValueError(f"--prior must be one of {list(PRIORS)}; got {name!r}")
    angles = 2 * math.pi * torch.arange(MOG_COMPONENTS) / MOG_COMPONENTS
    means = torch.zeros(MOG_COMPONENTS, latent_dim)
    means[:, 0] = MOG_RADIUS * torch.cos(angles)
    if latent_dim > 1:
        means[:, 1] = MOG_RADIUS * torch.sin(angles)
    components = dist.Normal(means, MOG_SCALE * torch.ones_like(means)).to_event(1)
    return dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(MOG_COMPONENTS)),
                                  components)


def add_parser(subparsers: Any, name: str) -> argparse.ArgumentParser:
    """Register ``fit NAME`` (one of :data:`MODELS`) on the ``fit`` subparsers."""
    parser = subparsers.add_parser(
        name,
        prog=f"ppl-models fit {name}",
        help=MODELS[name] + ", trained adversarially",
        description=f"Train {MODELS[name]} on images adversarially and write metrics.json, "
        "fit/, checkpoint/ and plots."
        + (" It takes 28x28 images only: 8x8 digits are refused, not resized."
           if name == "dcgan" else ""),
    )
    parser.add_argument(
        "--data", metavar="SOURCE", default=DEFAULT_DATA,
        help=f"{DEFAULT_DATA} (default; 8x8 scikit-learn digits in [0, 1]), mnist:DIR, "
        "fashion-mnist:DIR or binarized-mnist:PATH",
    )
    parser.add_argument("--prior", choices=PRIORS, default=None,
                        help="aae/wae only: prior of the codes; a mog prior is not stored in fit/ "
                        "(loading it warns and falls back to normal) (default normal)")
    parser.add_argument("--encoder", choices=("deterministic", "gaussian"), default=None,
                        help="aae/wae only: q(z|x) a point mass or a Gaussian sampled by "
                        "reparameterisation (Makhzani et al. 2016, sec. 2) "
                        "(default deterministic)")
    parser.add_argument("--penalty", choices=("mmd", "gan"), default=None,
                        help="wae only: divergence between codes and prior (default mmd)")
    parser.add_argument("--latent-dim", metavar="L", type=positive_int, default=None,
                        help=f"size of the code / noise (default {LATENT_DIMS[name]})")
    parser.add_argument("--hidden", metavar="W", type=positive_int, default=None,
                        help="width of the one hidden layer of every MLP network "
                        "(not dcgan) (default 128)")
    parser.add_argument("--epochs", metavar="N", type=positive_int, default=20,
                        help="training epochs (default 20)")
    parser.add_argument("--batch-size", metavar="B", type=positive_int, default=64,
                        help="minibatch size (default 64)")
    parser.add_argument("--lr", type=positive_float, default=2e-4,
                        help="Adam's learning rate of both players (default 0.0002)")
    parser.add_argument("--d-steps", metavar="K", type=positive_int, default=None,
                        help="discriminator updates per generator update (not wae with "
                        "--penalty mmd, which has no discriminator) (default 1)")
    parser.add_argument("--loss", choices=("non_saturating", "minimax"), default=None,
                        help="the generator's adversarial loss (not wae with --penalty mmd) "
                        "(default non_saturating)")
    parser.add_argument("--time-limit", type=positive_float, metavar="SECONDS",
                        help="start no new epoch after this many seconds of training")
    parser.add_argument("--seed", metavar="S", type=non_negative_int, default=0)
    add_quality_options(parser)
    add_output_options(parser, default=f"runs/{name}", resumable=True)
    parser.set_defaults(run=run, model=name)
    return show_defaults(parser)


def resolve_options(args: argparse.Namespace) -> None:
    """Refuse (``ValueError``, one line) an option given for a model it does not apply to;
    fill the defaults of the others in ``args``."""
    model = args.model
    for option, (default, models) in DEFAULTS.items():
        value = getattr(args, option)
        if value is not None and model not in models:
            flag = "--" + option.replace("_", "-")
            raise ValueError(f"{flag} does not apply to fit {model}")
        if value is None and model in models:
            setattr(args, option, default)
    if model == "wae" and args.penalty == "mmd":
        for option in ("d_steps", "loss"):
            if getattr(args, option) != DEFAULTS[option][0]:
                flag = "--" + option.replace("_", "-")
                raise ValueError(f"{flag} does not apply to fit wae --penalty mmd "
                                 "(no discriminator)")
    if args.latent_dim is None:
        args.latent_dim = LATENT_DIMS[model]


def build_model(args: argparse.Namespace, n_features: int) -> Any:
    """The model ``args`` describe, for images of ``n_features`` pixels."""
    from ppl_models.models import (
        DCGAN,
        GAN,
        AdversarialAutoencoder,
        InfoGAN,
        WassersteinAutoencoder,
    )

    name, latent = args.model, args.latent_dim
    if name == "dcgan":
        if n_features != DCGAN_PIXELS:
            side = math.isqrt(n_features)
            shape = f"{side}x{side}" if side * side == n_features else f"{n_features}-pixel"
            raise ValueError(f"fit dcgan needs 28x28 images; --data {args.data} has {shape} "
                             "ones (use --data mnist:DIR, or fit gan)")
        return DCGAN(latent)
    if name == "gan":
        return GAN(n_features, latent, hidden=(args.hidden,), d_hidden=(args.hidden,),
                   output="unit")
    if name == "infogan":
        return InfoGAN(n_features, latent, hidden=(args.hidden,), d_hidden=(args.hidden,),
                       q_hidden=(args.hidden,), output="unit")
    prior = make_prior(args.prior, latent)
    if name == "aae":
        return AdversarialAutoencoder(n_features, latent, prior=prior, hidden=(args.hidden,),
                                      d_hidden=(args.hidden,), encoder=args.encoder)
    return WassersteinAutoencoder(n_features, latent, penalty=args.penalty, prior=prior,
                                  hidden=(args.hidden,), d_hidden=(args.hidden,),
                                  encoder=args.encoder)


def code_mmd(model: Any, x: Any, seed: int) -> tuple[float, str, float]:
    r""":math:`\widehat{\mathrm{MMD}}^2_u` between codes of ``x`` (one draw of
    :math:`q(z \mid x)` each) and ``len(x)`` prior draws (drawn under
    ``torch.manual_seed(seed)`` in a forked RNG), the kernel's name and scale: a WAE's own
    kernel, else IMQ at :math:`2 L \bar\sigma_z^2`."""
    import torch

    from ppl_models.models import WassersteinAutoencoder
    from ppl_models.models.adversarial import KERNELS, mmd_unbiased

    if isinstance(model, WassersteinAutoencoder):
        kernel, scale = model.kernel, model.kernel_scale
    else:
        kernel, scale = "imq", 2.0 * model.latent_dim * float(model.prior.variance.mean())
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draws = model.prior.sample((x.shape[0],))
        codes = model.sample_codes(x)  # draws of q(z | x): the aggregated posterior
        value = mmd_unbiased(codes.double(), draws.double(), KERNELS[kernel](scale))
    return float(value), kernel, scale


def last_epoch_mean(history: dict[str, list[float]], name: str, n_epochs: int
                    ) -> float | None:
    """Mean of the per-step ``history[name]`` over the last of ``n_epochs`` epochs (each
    epoch has the same number of steps); ``None`` when the history has no such entry."""
    values = history.get(name) or []
    if not values:
        return None
    steps = len(values) // n_epochs
    return statistics.mean(values[-steps:])


def fit_options(args: argparse.Namespace, n_train: int) -> dict[str, Any]:
    """The keyword arguments of :func:`~ppl_models.infer.fit_adversarial` the parsed arguments
    set (every rank of a ``torchrun`` launch passes the same)."""
    options: dict[str, Any] = {
        "batch_size": min(args.batch_size, n_train), "num_epochs": args.epochs, "lr": args.lr,
        "time_limit": args.time_limit, "seed": args.seed,
    }
    if args.d_steps is not None:
        options.update(d_steps=args.d_steps, loss=args.loss)
    return options


def run(args: argparse.Namespace) -> int:
    """Fit and draw the adversarial model the parsed arguments name; return 0."""
    import torch

    from ppl_models._shared.jsonsafe import to_json
    from ppl_models._shared.warning_capture import captured_warnings
    from ppl_models.cli.adversarial_plots import (
        plot_code_map,
        plot_player_losses,
        plot_samples,
        plot_traversals,
    )
    from ppl_models.cli.data_parallel import other_adversarial_rank
    from ppl_models.images import load_images
    from ppl_models.infer import fit_adversarial
    from ppl_models.infer.adversarial_memory import adversarial_memory
    from ppl_models.infer.resources import check_memory
    from ppl_models.models import AdversarialAutoencoder, InfoGAN

    resolve_options(args)
    if other_adversarial_rank(args):  # under torchrun, a rank other than 0: fit, write nothing
        return 0
    out = args.out or Path("runs") / args.model
    progress = progress_of(args)
    with output_folder(out, need_bytes=NEED_BYTES, resume=args.resume,
                       overwrite=args.overwrite, resumable=True) as staging:
        x_train, _ = load_images(args.data, split="train")
        x_test, y_test = load_images(args.data, split="test")
        torch.manual_seed(args.seed)
        model = build_model(args, x_train.shape[1])
        options = fit_options(args, x_train.shape[0])
        batch_size = options["batch_size"]
        check_memory(adversarial_memory(model, x_train.shape[0], x_train.shape[1],
                                        batch_size=batch_size, n_test=x_test.shape[0]))
        d_updates = 0 if args.model == "wae" and args.penalty == "mmd" else args.d_steps
        if not args.quiet:
            print(f"ppl-models: {type(model).__name__}: {args.epochs} epochs x "
                  f"{-(-x_train.shape[0] // batch_size)} steps (batch {batch_size} of "
                  f"{x_train.shape[0]} images, {d_updates} discriminator update(s) per step)",
                  file=sys.stderr)
        with captured_warnings():
            result = fit_adversarial(
                model, x_train, checkpoint_dir=staging.checkpoint_dir, progress=progress,
                resume=staging.resume, **options,
            )
        model.eval()
        history = result.history
        terms = sorted(k for k in history if k not in ("elbo", "beta", "d_loss", "g_loss")
                       and "second" not in k and "time" not in k)
        epoch_seconds = result.info.get("epoch_seconds") or [result.fit_seconds]
        n_epochs = int(result.info.get("num_epochs", result.n_iter))
        checkpoint = result.info.get("checkpoint")
        figures: dict[str, Any] = {
            "model": args.model,
            "data": args.data,
            "prior": args.prior,
            "encoder": args.encoder,
            "penalty": args.penalty,
            "latent_dim": args.latent_dim,
            "hidden": args.hidden,
            "n_train": int(x_train.shape[0]),
            "n_test": int(x_test.shape[0]),
            "n_features": int(x_train.shape[1]),
            "batch_size": batch_size,
            "lr": args.lr,
            "d_steps": args.d_steps,
            "loss": args.loss,
            "n_epochs": n_epochs,
            "time_limit": args.time_limit,
            "stopped_by": result.info.get("stopped_by"),
            "resumed": staging.resume,
            "d_loss": last_epoch_mean(history, "d_loss", n_epochs),
            "g_loss": last_epoch_mean(history, "g_loss", n_epochs),
            "generator_terms": {k: last_epoch_mean(history, k, n_epochs) for k in terms},
            "epoch_seconds": statistics.mean(epoch_seconds),
            "fit_seconds": result.fit_seconds,
            "seed": args.seed,
            "checkpoint": None if checkpoint is None
            else os.path.relpath(checkpoint, staging.path),
        }
        figures.update(quality_metrics(model, args, staging.path))
        written = [plot_samples(model, staging.path / "samples.png", seed=args.seed),
                   plot_player_losses(history, staging.path / "training_curve.png")]
        if isinstance(model, AdversarialAutoencoder):
            mmd, kernel, scale = code_mmd(model, x_test, args.seed)
            figures.update(test_mmd=mmd, mmd_kernel=kernel, mmd_kernel_scale=scale)
            written.append(plot_code_map(model, x_test, y_test, staging.path / "latent_map.png"))
        if isinstance(model, InfoGAN):
            written.append(plot_traversals(model, staging.path / "traversals.png",
                                           seed=args.seed))
        result.save(staging.path / "fit")
        (staging.path / "metrics.json").write_text(to_json(figures))
    if not args.quiet:
        mmd_text = "" if "test_mmd" not in figures else f", test MMD^2 {figures['test_mmd']:.4f}"
        losses = {"d_loss": figures["d_loss"], "g_loss": figures["g_loss"],
                  **figures["generator_terms"]}
        print(f"{args.model} on {args.data} (means over the last epoch): "
              + ", ".join(f"{k} {v:.3f}" for k, v in losses.items() if v is not None)
              + f"{mmd_text}; {figures['n_epochs']} epochs, "
              f"{figures['epoch_seconds']:.2f} s/epoch")
        print(f"wrote {staging.out}/: metrics.json fit/ checkpoint/ "
              + " ".join(p.name for p in written))
    return 0
