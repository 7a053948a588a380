"""The ``ppl-models`` command: fit a model to data and write what a person reads.

``ppl-models fit gmm`` with no other argument fits a two-component Gaussian mixture to the
bundled Old Faithful data by EM and writes ``metrics.json``, ``summary.csv``,
``inference_data.nc`` and PNG plots into ``runs/gmm-em``. ``ppl-models fit vae`` trains a
variational autoencoder on the bundled 8x8 digits (or MNIST-like files) and writes
``metrics.json``, a checkpoint and PNGs (:mod:`ppl_models.vae_cli`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ppl_models.cli_args import positive_float, positive_int

__all__ = ["main"]




class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from ppl_models.models import MODELS

    parser = _Parser(
        prog="ppl-models",
        description="Latent-variable models in Pyro, fitted by EM, SVI or NUTS.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser(
        "fit",
        prog="ppl-models fit",
        help="fit a model and write metrics, summary, ArviZ data and plots",
        description="Fit a model; with no options, a 2-component GMM on Old Faithful by EM.",
    )
    fit.add_argument(
        "model", nargs="?", default="gmm", choices=sorted([*MODELS, *_FIT_RUNNERS]),
        help="which model (gmm)",
    )
    fit.add_argument(
        "--data",
        help="mixtures: bundled name or a .csv/.npz path (default faithful); vae: digits "
        "(default), mnist:DIR, fashion-mnist:DIR or binarized-mnist:PATH",
    )
    fit.add_argument("--columns", help="comma-separated columns to use (default: all)")
    fit.add_argument("--standardize", action="store_true", help="centre and scale each column")
    fit.add_argument(
        "--components", type=positive_int,
        help="K: mixture components (default 2); vae: mog components, vamp pseudo-inputs or "
        "gmvae labels (default 10)",
    )
    fit.add_argument(
        "--covariance-type", default="full", choices=("full", "diag", "spherical")
    )
    fit.add_argument("--df", type=float, default=4.0, help="Student-t degrees of freedom")
    fit.add_argument("--method", default="em", choices=sorted(_DRIVERS), help="fitting method")
    fit.add_argument("--guide", default="mean_field", help="SVI guide kind (default mean_field)")
    fit.add_argument("--n-init", type=positive_int, default=1, help="EM restarts")
    fit.add_argument(
        "--steps", type=positive_int, help="EM iterations / SVI steps / NUTS draws per chain"
    )
    fit.add_argument("--warmup", type=positive_int, default=300, help="NUTS warm-up steps")
    fit.add_argument("--chains", type=positive_int, default=2, help="NUTS chains")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", type=Path, help="output folder (default runs/MODEL-METHOD)")
    fit.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    fit.add_argument("--quiet", action="store_true", help="no progress bar, no summary table")
    vae = fit.add_argument_group("vae options")
    vae.add_argument("--prior", choices=("standard", "mog", "vamp", "gmvae"),
                     help="latent prior of the VAE (default standard)")
    vae.add_argument("--latent-dim", type=positive_int, help="size of the code (default 10)")
    vae.add_argument("--epochs", type=positive_int, help="training epochs (default 20)")
    vae.add_argument("--batch-size", type=positive_int, help="minibatch size (default 100)")
    vae.add_argument("--likelihood", choices=("bernoulli", "continuous_bernoulli", "gaussian"),
                     help="pixel density (default bernoulli, on thresholded pixels)")
    vae.add_argument("--particles", type=positive_int,
                     help="importance samples of the test log-likelihood (default 1000)")
    vae.add_argument("--kl-warmup", type=int, help="epochs of KL warm-up (default 0)")
    vae.add_argument("--time-limit", type=positive_float, metavar="SECONDS",
                     help="start no new epoch after this many seconds of training")
    fit.set_defaults(run=_fit)
    for add_subcommand in _subcommands():
        add_subcommand(commands)
    return parser


def _subcommands() -> list[Callable[[Any], None]]:
    """Subcommands beyond ``fit``: each module registers its parser and its ``run``."""
    from ppl_models.workflows import compare_cli, select_k_cli

    return [compare_cli.add_subcommand, select_k_cli.add_subcommand]


def _em(model, data, args, columns):
    from ppl_models.infer import fit_em

    return fit_em(
        model,
        data,
        n_init=args.n_init,
        max_iter=args.steps or 500,
        seed=args.seed,
        progress=not args.quiet,
        columns=columns,
    )


def _svi(model, data, args, columns):
    from ppl_models.infer import fit_svi

    return fit_svi(
        model,
        data,
        guide=args.guide,
        num_steps=args.steps or 2000,
        seed=args.seed,
        progress=not args.quiet,
        columns=columns,
    )


def _nuts(model, data, args, columns):
    from ppl_models.infer import fit_mcmc

    return fit_mcmc(
        model,
        data,
        num_samples=args.steps or 300,
        warmup_steps=args.warmup,
        num_chains=args.chains,
        seed=args.seed,
        progress=not args.quiet,
        columns=columns,
    )


#: Fitting methods: name -> function(model, data, args, columns) -> FitResult.
_DRIVERS: dict[str, Callable[..., Any]] = {"em": _em, "svi": _svi, "nuts": _nuts}


def _build_model(name: str, args: argparse.Namespace):
    from ppl_models.models import MODELS

    cls = MODELS[name]
    offered = {
        "n_components": args.components or 2,
        "covariance_type": args.covariance_type,
        "df": args.df,
    }
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in offered.items() if k in accepted})


def metrics(result) -> dict[str, Any]:
    """The machine-readable figures of a fit (what ``metrics.json`` holds)."""
    import torch

    model = result.model
    with torch.no_grad():
        params = model.full_params(result.params, result.n_features)
        params = {k: v.to(result.data.dtype) for k, v in params.items()}
        loglik = float(model.log_likelihood(result.data, params).mean())
    out: dict[str, Any] = {
        "model": model.name,
        "method": result.method,
        "n_samples": int(result.data.shape[0]),
        "n_features": result.n_features,
        "n_components": model.n_components,
        "covariance_type": model.covariance_type,
        "columns": result.columns,
        "mean_log_likelihood": loglik,
        "n_iter": result.n_iter,
        "converged": bool(result.converged),
        "fit_seconds": result.fit_seconds,
        "seed": result.seed,
    }
    keep = ("bic", "aic", "objective", "n_parameters", "guide", "elbo", "max_r_hat",
            "divergences", "num_chains", "warnings")
    out.update({k: result.info[k] for k in keep if k in result.info})
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()}


#: Options of ``fit vae`` and their defaults there; a mixture refuses them.
_VAE_DEFAULTS: dict[str, Any] = {
    "prior": "standard",
    "latent_dim": 10,
    "epochs": 20,
    "batch_size": 100,
    "likelihood": "bernoulli",
    "particles": 1000,
    "kl_warmup": 0,
    "time_limit": None,
    "components": 10,
}


def _fit_vae(args: argparse.Namespace) -> int:
    from ppl_models import vae_cli

    for flag in ("columns", "steps"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag} does not apply to fit vae (see --epochs, --batch-size)")
    if args.kl_warmup is not None and args.kl_warmup < 0:
        raise ValueError(f"--kl-warmup must be 0 or more epochs; got {args.kl_warmup}")
    for name, default in _VAE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    return vae_cli.run(args)


#: ``fit`` targets with their own runner (the mixtures of ``MODELS`` use :func:`_fit_mixture`).
_FIT_RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {"vae": _fit_vae}


def _fit(args: argparse.Namespace) -> int:
    return _FIT_RUNNERS.get(args.model, _fit_mixture)(args)


def _fit_mixture(args: argparse.Namespace) -> int:
    import pandas as pd

    from ppl_models.data import load
    from ppl_models.diagnostics import save_plots, summarize, to_inference_data

    given = [name for name in _VAE_DEFAULTS if name != "components"
             and getattr(args, name) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise ValueError(f"{flag} applies to fit vae only, not to fit {args.model}")
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    data, names = load(args.data or "faithful", columns=columns, standardize=args.standardize)
    model = _build_model(args.model, args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = _DRIVERS[args.method](model, data, args, names)
    for w in caught:
        print(f"ppl-models: warning: {w.message}", file=sys.stderr)
    out = args.out or Path("runs") / f"{args.model}-{args.method}"
    out.mkdir(parents=True, exist_ok=True)
    figures = metrics(result)
    idata = to_inference_data(result)
    table = summarize(idata)
    (out / "metrics.json").write_text(json.dumps(figures, indent=2) + "\n")
    table.to_csv(out / "summary.csv")
    idata.to_netcdf(str(out / "inference_data.nc"))
    result.save(out / "fit")
    written = [] if args.no_plots else save_plots(result, idata, out)
    if not args.quiet:
        with pd.option_context("display.max_rows", 200, "display.width", 120):
            print(table)
        print(
            f"\n{figures['model']} by {figures['method']}: mean log-likelihood "
            f"{figures['mean_log_likelihood']:.4f} per observation, {figures['n_iter']} "
            f"iterations, converged={figures['converged']}, {figures['fit_seconds']:.2f} s"
        )
        print(f"wrote {out}/: metrics.json summary.csv inference_data.nc fit/ "
              + " ".join(p.name for p in written))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ppl-models`` command; returns the exit status."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ppl-models: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ppl-models: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
