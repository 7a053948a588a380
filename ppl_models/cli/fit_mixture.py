"""``ppl-models fit gmm`` / ``fit student_t_mixture``: fit a finite mixture, write what a
person reads.

With no option it fits a two-component Gaussian mixture to the bundled Old Faithful data by EM
and writes ``metrics.json``, ``summary.csv``, ``inference_data.nc``, the saved fit ``fit/``
and PNG plots into ``runs/gmm-em``. Every mixture of :data:`ppl_models.models.MIXTURES` gets a
subcommand; its options are the constructor arguments it accepts (:data:`MODEL_OPTIONS`).
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ppl_models.cli.arguments import (
    add_data_options,
    add_output_options,
    columns_of,
    non_negative_int,
    positive_float,
    positive_int,
    progress_of,
)

__all__ = ["DRIVERS", "MODEL_OPTIONS", "add_parser", "metrics", "mixture_names", "run"]

#: A rough size of the outputs, for the free-space check (measured: about 0.5 MB for Old
#: Faithful by NUTS, mostly ``inference_data.nc`` and the plots).
NEED_BYTES = 20_000_000


def mixture_names() -> list[str]:
    """Names of :data:`ppl_models.models.MIXTURES`, sorted."""
    from ppl_models.models import MIXTURES

    return sorted(MIXTURES)


def _em(model, data, args, columns):
    from ppl_models.infer import fit_em

    return fit_em(model, data, n_init=args.n_init, max_iter=args.steps or 500, seed=args.seed,
                  progress=progress_of(args), columns=columns)


def _svi(model, data, args, columns):
    from ppl_models.infer import fit_svi

    return fit_svi(model, data, guide=args.guide, num_steps=args.steps or 2000, seed=args.seed,
                   progress=progress_of(args), columns=columns)


def _nuts(model, data, args, columns):
    from ppl_models.infer import fit_mcmc

    return fit_mcmc(model, data, num_samples=args.steps or 300, warmup_steps=args.warmup,
                    num_chains=args.chains, seed=args.seed, progress=progress_of(args),
                    columns=columns)


#: Fitting methods: ``--method`` -> function(model, data, args, columns) -> FitResult.
DRIVERS: dict[str, Callable[..., Any]] = {"em": _em, "svi": _svi, "nuts": _nuts}


def _components(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--components", metavar="K", type=positive_int, default=2,
                        help="K, the number of components (default 2)")


def _covariance_type(parser: argparse.ArgumentParser) -> None:
    from ppl_models.models.mixture import COVARIANCE_TYPES

    parser.add_argument("--covariance-type", default=COVARIANCE_TYPES[0],
                        choices=COVARIANCE_TYPES,
                        help=f"shape of each covariance (default {COVARIANCE_TYPES[0]})")


def _df(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--df", metavar="NU", type=positive_float, default=4.0,
                        help="Student-t degrees of freedom (default 4)")


#: Constructor argument -> (its attribute in the parsed arguments, how to add its option).
#: A mixture's subcommand offers the options of the arguments its class accepts.
MODEL_OPTIONS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "n_components": ("components", _components),
    "covariance_type": ("covariance_type", _covariance_type),
    "df": ("df", _df),
}


def _accepted(name: str) -> list[str]:
    from ppl_models.models import MIXTURES

    parameters = inspect.signature(MIXTURES[name]).parameters
    return [arg for arg in MODEL_OPTIONS if arg in parameters]


def add_parser(subparsers: Any, name: str) -> argparse.ArgumentParser:
    """Register ``fit NAME`` for the mixture ``NAME`` of ``MIXTURES``; returns its parser."""
    from guides import KINDS
    from ppl_models.models import MIXTURES

    parser = subparsers.add_parser(
        name,
        prog=f"ppl-models fit {name}",
        help=f"{MIXTURES[name].__name__} by EM, SVI or NUTS",
        description=f"Fit a {MIXTURES[name].__name__} (by default with K=2, by EM, on Old "
        "Faithful) and write metrics.json, summary.csv, inference_data.nc, fit/ and plots.",
    )
    add_data_options(parser, default="faithful")
    for arg in _accepted(name):
        MODEL_OPTIONS[arg][1](parser)
    parser.add_argument("--method", default="em", choices=sorted(DRIVERS),
                        help="fitting method (default em)")
    parser.add_argument("--guide", default="mean_field", choices=sorted(KINDS),
                        help="SVI guide kind (default mean_field)")
    parser.add_argument("--n-init", metavar="N", type=positive_int, default=1,
                        help="EM restarts (default 1)")
    parser.add_argument("--steps", metavar="N", type=positive_int,
                        help="EM iterations (500) / SVI steps (2000) / NUTS draws per chain (300)")
    parser.add_argument("--warmup", metavar="N", type=positive_int, default=300,
                        help="NUTS warm-up steps (default 300)")
    parser.add_argument("--chains", metavar="N", type=positive_int, default=2,
                        help="NUTS chains (default 2)")
    parser.add_argument("--seed", metavar="S", type=non_negative_int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_output_options(parser, default=f"runs/{name}-METHOD")
    parser.set_defaults(run=run, model=name)
    return parser


def build_model(args: argparse.Namespace) -> Any:
    """The mixture ``args.model`` with the options its class accepts."""
    from ppl_models.models import MIXTURES

    options = {arg: getattr(args, MODEL_OPTIONS[arg][0]) for arg in _accepted(args.model)}
    return MIXTURES[args.model](**options)


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
    return out


def run(args: argparse.Namespace) -> int:
    """Fit ``args.model`` as the parsed arguments say and write its outputs; return 0."""
    import pandas as pd

    from ppl_models._shared.jsonsafe import to_json
    from ppl_models._shared.warning_capture import captured_warnings
    from ppl_models.cli.output import output_folder
    from ppl_models.data import load
    from ppl_models.diagnostics import save_plots, summarize, to_inference_data

    out = args.out or Path("runs") / f"{args.model}-{args.method}"
    with output_folder(out, need_bytes=NEED_BYTES, overwrite=args.overwrite) as staging:
        data, names = load(args.data, columns=columns_of(args), standardize=args.standardize)
        model = build_model(args)
        with captured_warnings():
            result = DRIVERS[args.method](model, data, args, names)
        figures = metrics(result)
        idata = to_inference_data(result)
        table = summarize(idata)
        (staging.path / "metrics.json").write_text(to_json(figures))  # non-finite -> null
        table.to_csv(staging.path / "summary.csv")
        idata.to_netcdf(str(staging.path / "inference_data.nc"))
        result.save(staging.path / "fit")
        written = [] if args.no_plots else save_plots(result, idata, staging.path)
    if not args.quiet:
        with pd.option_context("display.max_rows", 200, "display.width", 120):
            print(table)
        print(
            f"\n{figures['model']} by {figures['method']}: mean log-likelihood "
            f"{figures['mean_log_likelihood']:.4f} per observation, {figures['n_iter']} "
            f"iterations, converged={figures['converged']}, {figures['fit_seconds']:.2f} s"
        )
        print(f"wrote {staging.out}/: metrics.json summary.csv inference_data.nc fit/ "
              + " ".join(p.name for p in written))
    return 0
