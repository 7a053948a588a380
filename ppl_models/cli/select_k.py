"""``ppl-models select-k``: fit the GMM for a range of K and write the comparison.

``ppl-models select-k --data PATH --ks 1-6 --out DIR`` writes into DIR ``selection.csv`` (the
table of :func:`~ppl_models.workflows.select_k.select_components`), ``metrics.json`` (the
same figures, the best K per criterion and the warnings, JSON-safe) and ``selection.png``, and
prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from ppl_models.cli.arguments import (
    add_data_options,
    add_output_options,
    columns_of,
    non_negative_int,
    positive_int,
    progress_of,
    show_defaults,
)

__all__ = ["MAX_KS", "add_subcommand", "parse_ks", "run"]

#: Output folder when ``--out`` is not given.
DEFAULT_OUT = Path("runs") / "select-k"
#: A rough size of the outputs, for the free-space check (a CSV, JSON, one PNG).
NEED_BYTES = 10_000_000


#: Most values of K one ``select-k`` run takes (each is an EM fit with restarts and an SVI or
#: NUTS fit): a range such as ``1-999999999`` is refused when parsed, before it is expanded.
MAX_KS = 1000


def parse_ks(text: str) -> list[int]:
    """Candidate K from ``"1-6"`` (a range, both ends included), ``"1,2,4"`` or a mix
    (``"1-3,5"``), sorted.

    The ranges are checked before they are expanded, so a range of a billion values is
    refused at once (:data:`MAX_KS`); K larger than the number of observations is refused
    once the data are read (:func:`ppl_models.workflows.select_k.check_ks`).

    Raises
    ------
    ValueError
        For an empty text, a part that is not a whole number or range, K < 1, a decreasing
        range, a K listed twice or more than :data:`MAX_KS` values.
    """
    text = str(text).strip()
    if not text:
        raise ValueError("the list of K is empty: give e.g. 1-6 or 1,2,4")
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        low_text, sep, high_text = part.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if sep else low
        except ValueError:
            raise ValueError(
                f"{part!r} is not a whole number or a range like 1-6"
            ) from None
        if low < 1 or high < 1:
            raise ValueError(f"every K must be at least 1; got {part!r}")
        if high < low:
            raise ValueError(f"the range {part!r} is decreasing; write {high}-{low}")
        ranges.append((low, high))
    count = sum(high - low + 1 for low, high in ranges)
    if count > MAX_KS:  # before anything is expanded
        raise ValueError(
            f"{text} lists {count} values of K; at most {MAX_KS} are fitted in one run (and "
            "never more than the number of observations)"
        )
    ks = sorted(k for low, high in ranges for k in range(low, high + 1))
    repeated = sorted({a for a, b in itertools.pairwise(ks) if a == b})
    if repeated:
        shown = ", ".join(str(k) for k in repeated[:10]) + (", ..." if len(repeated) > 10 else "")
        raise ValueError(f"K=[{shown}] listed more than once")
    return ks


def _ks_argument(text: str) -> list[int]:
    try:
        return parse_ks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``select-k`` on an ``add_subparsers()`` object; returns its parser."""
    from ppl_models.models.mixture import COVARIANCE_TYPES
    from ppl_models.workflows.select_k import CRITERIA, POSTERIORS

    parser = subparsers.add_parser(
        "select-k",
        prog="ppl-models select-k",
        help="fit the GMM for several K and compare BIC, AIC, PSIS-LOO and ELBO",
        description=(
            "Fit a Gaussian mixture for each K (EM, then SVI or NUTS from EM's optimum) and "
            "write selection.csv, metrics.json and selection.png."
        ),
    )
    add_data_options(parser, default="faithful")
    parser.add_argument(
        "--ks", metavar="KS", type=_ks_argument, default=parse_ks("1-6"),
        help=f"candidate K: a range 1-6, a list 1,2,4 or both; at most {MAX_KS} values, each "
        "at most the number of observations (default 1-6)",
    )
    parser.add_argument(
        "--criteria", metavar="NAMES", default="bic,loo,elbo",
        help=f"comma-separated, from {','.join(CRITERIA)} (default bic,loo,elbo)",
    )
    parser.add_argument("--covariance-type", default=COVARIANCE_TYPES[0],
                        choices=COVARIANCE_TYPES)
    parser.add_argument(
        "--posterior", default="svi", choices=sorted(POSTERIORS),
        help="draws for LOO: full-rank SVI or NUTS (default svi)",
    )
    parser.add_argument("--n-init", metavar="N", type=positive_int, default=5,
                        help="EM restarts (default 5)")
    parser.add_argument(
        "--steps", metavar="N", type=positive_int, default=1000,
        help="SVI steps per K (default 1000)"
    )
    parser.add_argument(
        "--draws", metavar="N", type=positive_int, default=500,
        help="posterior draws for LOO (default 500)"
    )
    parser.add_argument("--seed", metavar="S", type=non_negative_int, default=0)
    add_output_options(parser, default=str(DEFAULT_OUT))
    parser.set_defaults(run=run)
    return show_defaults(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``select-k`` with parsed arguments; returns the exit status (0)."""
    import pandas as pd

    from ppl_models._shared.jsonsafe import to_json
    from ppl_models._shared.warning_capture import captured_warnings
    from ppl_models.cli.output import output_folder
    from ppl_models.data import load
    from ppl_models.infer.resources import check_memory, mixture_memory
    from ppl_models.models import GaussianMixture
    from ppl_models.workflows.select_k import (
        check_ks,
        plot_selection,
        select_components,
        table_to_json,
    )

    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    out = args.out or DEFAULT_OUT
    if not args.quiet:
        then = (f"{args.steps} SVI steps" if args.posterior == "svi"
                else f"a NUTS run for {args.draws} draws")
        print(f"ppl-models: {len(args.ks)} values of K, each {args.n_init} EM restart(s) "
              f"then {then}", file=sys.stderr)
    with output_folder(out, need_bytes=NEED_BYTES, overwrite=args.overwrite) as staging:
        data, names = load(args.data, columns=columns_of(args), standardize=args.standardize,
                           key=args.key)
        n, d = data.shape
        check_ks(args.ks, n)  # before any fit: K above N is refused in one line
        for posterior in ("em", args.posterior):
            check_memory(mixture_memory(
                GaussianMixture(max(args.ks), args.covariance_type), n, d, method=posterior,
                num_draws=args.draws, arviz=False,
            ))
        with captured_warnings() as notes:
            table = select_components(
                data,
                args.ks,
                criteria,
                covariance_type=args.covariance_type,
                n_init=args.n_init,
                posterior=args.posterior,
                num_steps=args.steps,
                num_draws=args.draws,
                seed=args.seed,
                progress=progress_of(args),
            )
            notes.extend(table.attrs.get("warnings", []))
        table.to_csv(staging.path / "selection.csv")
        metrics = {
            "data": str(args.data),
            "columns": list(names),
            "ks": list(args.ks),
            "seed": args.seed,
            **table_to_json(table),
        }
        (staging.path / "metrics.json").write_text(to_json(metrics))
        plot_selection(table, staging.path / "selection.png")
    if not args.quiet:
        shown = table.drop(columns=[c for c in table if c.startswith("best_")])
        with pd.option_context("display.width", 160, "display.max_columns", 30):
            print(shown.round(2))
        best = ", ".join(f"{name}: K={k}" for name, k in table.attrs["best"].items())
        print(f"\nbest {best} ({table.attrs['seconds']:.1f} s)")
        print(f"wrote {staging.out}/: selection.csv metrics.json selection.png")
    return 0
