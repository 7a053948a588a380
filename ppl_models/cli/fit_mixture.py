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
    int_at_least,
    non_negative_int,
    positive_float,
    positive_int,
    progress_of,
    show_defaults,
)

__all__ = [
    "DRIVERS",
    "MODEL_OPTIONS",
    "SE_AUTO_SECONDS",
    "add_parser",
    "check_standard_errors",
    "metrics",
    "mixture_names",
    "run",
    "standard_errors_plan",
]

#: A rough size of the outputs, for the free-space check (measured: about 0.5 MB for Old
#: Faithful by NUTS, mostly ``inference_data.nc`` and the plots).
NEED_BYTES = 20_000_000


def mixture_names() -> list[str]:
    """Names of :data:`ppl_models.models.MIXTURES`, sorted."""
    from ppl_models.models import MIXTURES

    return sorted(MIXTURES)


#: Method-specific options: ``dest`` -> (option, the methods it applies to, default). Their
#: defaults are the Python API's (:func:`~ppl_models.infer.fit_em`,
#: :func:`~ppl_models.infer.fit_svi`, :func:`~ppl_models.infer.fit_mcmc`); an option given
#: with another method is refused (:func:`check_applicable`).
METHOD_OPTIONS: dict[str, tuple[str, tuple[str, ...], Any]] = {
    "max_iter": ("--max-iter", ("em",), 100),
    "n_init": ("--n-init", ("em",), 1),
    "num_steps": ("--num-steps", ("svi",), 2000),
    "guide": ("--guide", ("svi",), "mean_field"),
    "num_samples": ("--num-samples", ("nuts",), 500),
    "warmup": ("--warmup", ("nuts",), 500),
    "chains": ("--chains", ("nuts",), 2),
}


def check_applicable(args: argparse.Namespace) -> None:
    """Refuse (``ValueError``, one line, exit status 2) a method option given with a method
    it does not apply to; fill in the defaults of the others."""
    if args.chunk_size is not None and args.method != "em":
        raise ValueError(f"--chunk-size applies to --method em only, not {args.method}")
    for dest, (option, methods, default) in METHOD_OPTIONS.items():
        value = getattr(args, dest)
        if value is None:
            setattr(args, dest, default)
        elif args.method not in methods:
            raise ValueError(
                f"{option} applies to --method {'/'.join(methods)} only, not {args.method}"
            )


def _em(model, data, args, columns):
    from ppl_models.infer import fit_em

    return fit_em(model, data, n_init=args.n_init, max_iter=args.max_iter, seed=args.seed,
                  progress=progress_of(args), columns=columns, chunk_size=args.chunk_size)


def _svi(model, data, args, columns):
    from ppl_models.infer import fit_svi

    return fit_svi(model, data, guide=args.guide, num_steps=args.num_steps, seed=args.seed,
                   progress=progress_of(args), columns=columns)


def _nuts(model, data, args, columns):
    from ppl_models.infer import fit_mcmc

    return fit_mcmc(model, data, num_samples=args.num_samples, warmup_steps=args.warmup,
                    num_chains=args.chains, seed=args.seed, progress=progress_of(args),
                    columns=columns)


def work_estimate(args: argparse.Namespace) -> str:
    """One line saying how much work the fit will do (printed before a long run)."""
    if args.method == "nuts":
        return (f"NUTS: {args.chains} chain(s) run one after the other, each "
                f"{args.warmup} warm-up + {args.num_samples} draws")
    if args.method == "svi":
        return f"SVI: 1 fit of {args.num_steps} steps ({args.guide} guide)"
    return f"EM: {args.n_init} restart(s) of at most {args.max_iter} iterations"


#: With neither ``--standard-errors`` nor ``--no-standard-errors``, EM's standard errors are
#: computed when estimated to take at most this long
#: (:func:`ppl_models.infer.resources.standard_errors_seconds`): their cost is one double
#: backward pass per free parameter, 3 to 200 times the fit itself (see
#: :func:`~ppl_models.infer.fit_em`), negligible on Old Faithful (about 0.07 s) and 10 s or
#: more for 10,000 x 10 with K=5.
SE_AUTO_SECONDS = 2.0


def check_standard_errors(args: argparse.Namespace) -> None:
    """Refuse (``ValueError``, one line, exit status 2) ``--standard-errors`` or
    ``--bootstrap`` with a method other than EM, and ``--bootstrap`` with
    ``--no-standard-errors``."""
    asked = args.standard_errors is True or args.bootstrap is not None
    if args.method != "em" and asked:
        option = "--bootstrap" if args.bootstrap is not None else "--standard-errors"
        raise ValueError(
            f"{option} applies to --method em only: a {args.method} fit reports posterior "
            "standard deviations (the sd column of summary.csv) instead"
        )
    if args.bootstrap is not None and args.standard_errors is False:
        raise ValueError("--bootstrap computes standard errors; it contradicts "
                         "--no-standard-errors")


def standard_errors_plan(args: argparse.Namespace, model, n: int, d: int
                         ) -> tuple[str | None, str]:
    """``(method, why)``: how EM's standard errors are computed
    (``"observed_information"``, ``"bootstrap"``, or ``None`` for not at all) and, when not,
    why in words (empty for a method other than EM, which has posterior standard deviations).
    """
    from ppl_models.infer.resources import standard_errors_seconds

    if args.method != "em":
        return None, ""
    if _by_blocks(args) and args.standard_errors is not True and args.bootstrap is None:
        return None, "not computed: the data are read by blocks (--chunk-size or a .npy file)"
    if args.bootstrap is not None:
        return "bootstrap", ""
    if args.standard_errors is True:
        return "observed_information", ""
    if args.standard_errors is False:
        return None, "not computed (--no-standard-errors)"
    seconds = standard_errors_seconds(model, n, d)
    if seconds <= SE_AUTO_SECONDS:
        return "observed_information", ""
    return None, (
        f"not computed: estimated to take about {seconds:.0f} s (more than "
        f"{SE_AUTO_SECONDS:g} s); pass --standard-errors to compute them"
    )


def _removed_steps(text: str) -> int:
    raise argparse.ArgumentTypeError(
        "--steps was removed: use --max-iter (em), --num-steps (svi) or --num-samples (nuts)"
    )


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
    parser.add_argument("--label-column", metavar="NAME",
                        help="a column of true labels, kept out of the fit; its cluster "
                        "accuracy goes into metrics.json (default: none)")
    parser.add_argument("--method", default="em", choices=sorted(DRIVERS),
                        help="fitting method (default em)")
    defaults = {dest: default for dest, (_, _, default) in METHOD_OPTIONS.items()}
    parser.add_argument("--max-iter", metavar="N", type=positive_int,
                        help=f"EM iterations at most (default {defaults['max_iter']}; em only)")
    parser.add_argument("--n-init", metavar="N", type=positive_int,
                        help=f"EM restarts (default {defaults['n_init']}; em only)")
    parser.add_argument("--chunk-size", metavar="ROWS", type=positive_int,
                        help="EM by blocks of ROWS rows (memory bounded by the block; same fit "
                        "as in memory); a --data FILE.npy is memory-mapped and read by blocks "
                        "of 65536 rows without it (default: in memory; em only)")
    parser.add_argument("--num-steps", metavar="N", type=positive_int,
                        help=f"SVI steps (default {defaults['num_steps']}; svi only)")
    parser.add_argument("--guide", choices=sorted(KINDS),
                        help=f"SVI guide kind (default {defaults['guide']}; svi only)")
    parser.add_argument("--num-samples", metavar="N", type=positive_int,
                        help=f"NUTS draws kept per chain (default {defaults['num_samples']}; "
                        "nuts only)")
    parser.add_argument("--warmup", metavar="N", type=positive_int,
                        help=f"NUTS warm-up steps per chain (default {defaults['warmup']}; "
                        "nuts only)")
    parser.add_argument("--chains", metavar="N", type=positive_int,
                        help=f"NUTS chains (default {defaults['chains']}; nuts only)")
    parser.add_argument(
        "--standard-errors", action=argparse.BooleanOptionalAction, default=None,
        help="standard errors and asymptotic 95%% Wald intervals of every parameter from the "
        "observed information (em only), in summary.csv (se, lower_95, upper_95, interval), "
        "metrics.json and inference_data.nc (group standard_errors) (default: computed when "
        f"estimated to take at most {SE_AUTO_SECONDS:g} s, e.g. on Old Faithful; each costs "
        "one backward pass per parameter, up to 200 times the fit)",
    )
    parser.add_argument(
        "--bootstrap", metavar="B", type=int_at_least(2),
        help="standard errors and 95%% percentile intervals from a parametric bootstrap of B "
        ">= 2 refits instead (em only; better in small samples, B times the cost of a fit) "
        "(default: off)",
    )
    parser.add_argument("--steps", metavar="N", type=_removed_steps,
                        help="removed (it meant three things): use --max-iter, --num-steps "
                        "or --num-samples (default: none)")
    parser.add_argument("--seed", metavar="S", type=non_negative_int, default=0,
                        help="random seed (default 0)")
    parser.add_argument("--no-plots", action="store_true",
                        help="skip the PNG plots (default: plots are written)")
    add_output_options(parser, default=f"runs/{name}-METHOD")
    parser.set_defaults(run=run, model=name)
    return show_defaults(parser)


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
        if "chunk_size" in result.info:  # by blocks: the fit's final E-step, not (N, K) at once
            loglik = float(result.info["mean_log_likelihood"])
        else:
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
    keep = ("objective", "guide", "elbo", "convergence", "max_r_hat", "divergences", "num_chains",
            "warnings", "chunk_size")
    out.update({k: result.info[k] for k in keep if k in result.info})
    out.update(_student_t(model, params))
    return out


def _student_t(model, params: dict) -> dict[str, Any]:
    """A Student-t mixture's ``df`` and implied covariances: its ``covariances`` are scale
    matrices :math:`\\Sigma_k`; the covariance of a multivariate t is
    :math:`\\Sigma_k \\nu / (\\nu - 2)` for :math:`\\nu > 2` and undefined otherwise."""
    from ppl_models.models import StudentTMixture

    if not isinstance(model, StudentTMixture):
        return {}
    df = float(model.df)
    scale = model.covariances(params)
    out: dict[str, Any] = {
        "df": df,
        "covariances_are": "scale matrices Sigma_k; covariance = Sigma_k * df / (df - 2)",
    }
    out["scale_matrices"] = scale.tolist()
    if df > 2:
        out["implied_covariances"] = (scale * df / (df - 2)).tolist()
    else:
        out["implied_covariances"] = f"undefined: df = {df:g} <= 2 (infinite variance)"
    return out


def _num_draws(args: argparse.Namespace) -> int:
    """Posterior draws a fit keeps: NUTS's chains x draws, SVI's 1,000 guide draws."""
    return args.chains * args.num_samples if args.method == "nuts" else 1000


def _with_standard_errors(result, method: str, args: argparse.Namespace):
    """``result`` with ``info["standard_errors"]`` (JSON form) from
    :func:`~ppl_models.infer.standard_errors.compute_standard_errors`; its reasons for
    distrust are issued as warnings (printed as ``ppl-models: warning: ...``)."""
    import dataclasses
    import warnings

    from ppl_models.infer.standard_errors import compute_standard_errors

    errors = compute_standard_errors(result, method, n_boot=args.bootstrap or 2,
                                     seed=args.seed)
    for note in errors.warnings:
        warnings.warn(f"standard errors: {note}", UserWarning, stacklevel=2)
    return dataclasses.replace(result, info={**result.info, "standard_errors": errors.to_json()})


def _by_blocks(args: argparse.Namespace) -> bool:
    """EM reads the data block by block: ``--chunk-size``, or a ``.npy`` file with EM."""
    npy = str(args.data).lower().endswith(".npy")
    return args.method == "em" and (args.chunk_size is not None or npy)


def _open_npy(args: argparse.Namespace):
    """A ``.npy`` file for EM by blocks: memory-mapped, its values checked block by block by
    the fit (never loaded whole)."""
    from ppl_models.data import open_npy

    for option, given in (("--columns", args.columns), ("--standardize", args.standardize),
                          ("--label-column", args.label_column), ("--key", args.key)):
        if given:
            raise ValueError(f"{option} does not apply to a .npy file read by blocks (save "
                             "the columns wanted, standardized, as their own .npy)")
    data = open_npy(args.data)
    return data, [f"x[{j}]" for j in range(data.shape[1])], None


def _load(args: argparse.Namespace):
    """``(data, column names, labels or None)``: with ``--label-column`` the label column is
    read on its own and kept out of the features; a ``.npy`` file for EM is memory-mapped."""
    from ppl_models.data import load

    if args.method == "em" and str(args.data).lower().endswith(".npy"):
        return _open_npy(args)
    columns = columns_of(args)
    if args.label_column is None:
        data, names = load(args.data, columns=columns, standardize=args.standardize,
                           key=args.key)
        return data, names, None
    label = args.label_column
    if columns is None:
        _, columns = load(args.data, key=args.key)
    if label not in columns:
        raise ValueError(f"--label-column {label!r} is not a column of {args.data}; "
                         f"have {list(columns)}")
    features = [c for c in columns if c != label]
    if not features:
        raise ValueError(f"--label-column {label!r} leaves no feature to fit")
    data, names = load(args.data, columns=features, standardize=args.standardize, key=args.key)
    labels, _ = load(args.data, columns=[label], key=args.key)
    return data, names, labels[:, 0].round().long().numpy()


def run(args: argparse.Namespace) -> int:
    """Fit ``args.model`` as the parsed arguments say and write its outputs; return 0."""
    import sys

    import pandas as pd

    from ppl_models._shared.jsonsafe import to_json
    from ppl_models._shared.warning_capture import captured_warnings
    from ppl_models.cli.output import output_folder
    from ppl_models.diagnostics import (
        cluster_accuracy,
        membership_table,
        save_plots,
        summarize,
        to_inference_data,
    )
    from ppl_models.diagnostics.criteria import information_criteria
    from ppl_models.infer.resources import check_memory, mixture_memory

    check_applicable(args)
    check_standard_errors(args)
    out = args.out or Path("runs") / f"{args.model}-{args.method}"
    if not args.quiet:
        print(f"ppl-models: {work_estimate(args)}", file=sys.stderr)
    with output_folder(out, need_bytes=NEED_BYTES, overwrite=args.overwrite) as staging:
        data, names, labels = _load(args)
        model = build_model(args)
        n, d = data.shape
        se_method, se_skipped = standard_errors_plan(args, model, n, d)
        if not _by_blocks(args):  # by blocks, the fit's memory is the block's
            check_memory(mixture_memory(
                model, n, d, method=args.method, num_draws=_num_draws(args),
                standard_errors=se_method is not None,
            ))
        with captured_warnings():
            result = DRIVERS[args.method](model, data, args, names)
            if se_method is not None:
                result = _with_standard_errors(result, se_method, args)
        figures = metrics(result)
        if se_method is not None:
            figures["standard_errors"] = result.info["standard_errors"]
        elif se_skipped:
            figures["standard_errors"] = se_skipped
        idata = to_inference_data(result)
        figures.update(information_criteria(result, idata))
        table = summarize(idata)
        members = membership_table(result)
        if labels is not None:
            figures["label_column"] = args.label_column
            figures["cluster_accuracy"] = cluster_accuracy(members["label"].to_numpy(), labels)
        (staging.path / "metrics.json").write_text(to_json(figures))  # non-finite -> null
        table.to_csv(staging.path / "summary.csv")
        members.to_csv(staging.path / "assignments.csv", index=False)
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
        if se_skipped:
            print(f"standard errors {se_skipped}")
        if written and len(names) > 2:
            print(f"note: the mixture plot shows the first two features, {names[0]} and "
                  f"{names[1]}, of {len(names)}")
        print(f"wrote {staging.out}/: metrics.json summary.csv assignments.csv "
              "inference_data.nc fit/ " + " ".join(p.name for p in written))
    return 0
