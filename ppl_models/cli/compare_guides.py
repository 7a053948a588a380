"""The ``ppl-models compare-guides`` subcommand.

``ppl-models compare-guides gmm --guides map,mean_field,full_rank,low_rank,flow --out DIR``
fits every guide over seeds on a training split of the data, fits NUTS as the reference and
writes into ``DIR``: ``comparison.csv`` (one row per guide), ``metrics.json`` (settings, the
table, per-seed scores, the reference's diagnostics and notes; ``nan`` written as ``null``),
``distance_per_scalar.csv`` and ``comparison.png``.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

from ppl_models.cli.arguments import (
    add_data_options,
    add_output_options,
    columns_of,
    fraction,
    non_negative_int,
    positive_int,
    progress_of,
    show_defaults,
)

__all__ = ["add_subcommand", "run"]

#: A rough size of the outputs, for the free-space check (two CSVs, JSON, one PNG).
NEED_BYTES = 10_000_000


def _seeds(text: str) -> int | list[int]:
    """``"3"``: three seeds 0, 1, 2; ``"0,5,7"``: those seeds."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a count or a comma-separated list of seeds; got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"must be a count or a list of seeds; got {text!r}")
    if "," not in text:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(
                f"the number of seeds must be a positive integer; got {text}"
            )
        return values[0]
    return values


def add_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``compare-guides`` on an ``argparse`` subparsers object.

    Returns the new parser, whose ``run`` default is :func:`run`.
    """
    from ppl_models.cli.fit_mixture import mixture_names
    from ppl_models.models.mixture import COVARIANCE_TYPES
    from ppl_models.workflows.compare import DEFAULT_GUIDES

    parser = subparsers.add_parser(
        "compare-guides",
        prog="ppl-models compare-guides",
        help="fit several SVI guides over seeds and compare them with NUTS",
        description=(
            "Fit every guide on a training split, with NUTS as the reference posterior, and "
            "write comparison.csv, metrics.json, distance_per_scalar.csv and comparison.png."
        ),
    )
    parser.add_argument("model", choices=mixture_names(), help="which model")
    add_data_options(parser, default="faithful")
    parser.add_argument("--components", metavar="K", type=positive_int, default=2,
                        help="K (default 2)")
    parser.add_argument("--covariance-type", default=COVARIANCE_TYPES[0],
                        choices=COVARIANCE_TYPES)
    parser.add_argument(
        "--guides", metavar="KINDS",
        default=",".join(DEFAULT_GUIDES),
        help=f"comma-separated guide kinds (default {','.join(DEFAULT_GUIDES)})",
    )
    parser.add_argument("--steps", metavar="N", type=positive_int, default=2000,
                        help="SVI steps per fit")
    parser.add_argument(
        "--seeds", metavar="SEEDS",
        type=_seeds,
        default=2,
        help="a count N (seeds 0..N-1) or a comma list like 0,3,7 (one seed S: 'S,')",
    )
    parser.add_argument(
        "--holdout", metavar="FRACTION", type=fraction, default=0.2,
        help="fraction of rows held out (0.2)"
    )
    parser.add_argument(
        "--particles", metavar="N", type=positive_int, default=1000,
        help="importance particles per fit"
    )
    parser.add_argument(
        "--draws", metavar="N", type=positive_int, default=1000,
        help="guide draws kept per fit (1000)"
    )
    parser.add_argument(
        "--nuts-samples", metavar="N",
        type=non_negative_int,
        default=500,
        help="NUTS draws per chain; 0 skips the reference",
    )
    parser.add_argument("--nuts-warmup", metavar="N", type=non_negative_int, default=500)
    parser.add_argument("--chains", metavar="N", type=positive_int, default=2, help="NUTS chains")
    add_output_options(parser, default="runs/MODEL-compare")
    parser.set_defaults(run=run)
    return show_defaults(parser)


def _build_model(args: argparse.Namespace):
    from ppl_models.models import MIXTURES

    cls = MIXTURES[args.model]
    offered = {"n_components": args.components, "covariance_type": args.covariance_type}
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in offered.items() if k in accepted})


def run(args: argparse.Namespace) -> int:
    """Run the comparison and write its files; returns the exit status (0)."""
    import pandas as pd

    from ppl_models._shared.jsonsafe import to_json
    from ppl_models._shared.warning_capture import captured_warnings
    from ppl_models.cli.output import output_folder
    from ppl_models.data import load
    from ppl_models.workflows.compare import compare_guides
    from ppl_models.workflows.compare_plot import plot_comparison

    out = args.out or Path("runs") / f"{args.model}-compare"
    if not args.quiet:
        kinds = [g.strip() for g in args.guides.split(",") if g.strip()]
        n_seeds = args.seeds if isinstance(args.seeds, int) else len(args.seeds)
        nuts = (f"a NUTS reference of {args.chains} chain(s) x ({args.nuts_warmup} warm-up + "
                f"{args.nuts_samples} draws), then " if args.nuts_samples > 0 else "")
        print(f"ppl-models: {nuts}{len(kinds) * n_seeds} SVI fits ({len(kinds)} guides x "
              f"{n_seeds} seeds) of {args.steps} steps each", file=sys.stderr)
    with output_folder(out, need_bytes=NEED_BYTES, overwrite=args.overwrite) as staging:
        data, names = load(args.data, columns=columns_of(args), standardize=args.standardize,
                            key=args.key)
        kinds = [g.strip() for g in args.guides.split(",") if g.strip()]
        with captured_warnings():
            comparison = compare_guides(
                _build_model(args),
                data,
                kinds,
                num_steps=args.steps,
                seeds=args.seeds,
                reference="nuts" if args.nuts_samples > 0 else None,
                holdout=args.holdout,
                num_particles=args.particles,
                num_draws=max(args.draws, 2),
                nuts_samples=max(args.nuts_samples, 1),
                nuts_warmup=args.nuts_warmup,
                nuts_chains=args.chains,
                progress=progress_of(args),
                columns=names,
            )
        comparison.table.to_csv(staging.path / "comparison.csv")
        comparison.per_scalar.to_csv(staging.path / "distance_per_scalar.csv", index=False)
        figures = comparison.to_json()
        figures["settings"].update(data=args.data, columns=names, standardize=args.standardize)
        (staging.path / "metrics.json").write_text(to_json(figures))
        plot_comparison(comparison, staging.path / "comparison.png")
    if not args.quiet:
        shown = ["n_seeds", *[k for k in comparison.table if k not in ("method", "n_seeds")]]
        with pd.option_context("display.width", 160, "display.max_columns", 40,
                               "display.float_format", "{:.4g}".format):
            print(comparison.table[shown].T)
        for guide, note in comparison.notes.items():
            print(f"note: {guide}: {note}")
        print(f"wrote {staging.out}/: comparison.csv metrics.json distance_per_scalar.csv "
              "comparison.png")
    return 0
