"""Argument types and option groups shared by every ``ppl-models`` subcommand.

Usage errors read like every other error of the package (:mod:`ppl_models._shared.checks`):
``argument --components: must be a positive integer; got 0``, in one line, exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ppl_models._shared.checks import float_rule, int_rule
from ppl_models._shared.progress import show_progress

__all__ = [
    "Parser",
    "add_data_options",
    "add_output_options",
    "columns_of",
    "fraction",
    "int_at_least",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "progress_of",
    "show_defaults",
]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors take one line, like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {int_rule(minimum)}; got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {int_rule(minimum)}; got {value}")
    return value


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 1."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 0."""
    return _integer(text, 0)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An ``argparse`` type: an integer of at least ``minimum`` (``int_at_least(2)`` for a
    bootstrap's number of refits)."""

    def parse(text: str) -> int:
        return _integer(text, minimum)

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


def _number(text: str, low: float, high: float | None, strict_low: bool, strict_high: bool
            ) -> float:
    rule = float_rule(low, high, strict_minimum=strict_low, strict_maximum=strict_high)
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {rule}; got {text!r}") from None
    inside = value > low if strict_low else value >= low
    if high is not None:
        inside = inside and (value < high if strict_high else value <= high)
    if not inside or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be {rule}; got {text}")
    return value


def positive_float(text: str) -> float:
    """An ``argparse`` type: a finite number above 0 (e.g. seconds)."""
    return _number(text, 0.0, None, True, False)


def fraction(text: str) -> float:
    """An ``argparse`` type: a number in [0, 1) (e.g. a held-out share of the rows)."""
    return _number(text, 0.0, 1.0, False, True)


def add_data_options(parser: argparse.ArgumentParser, *, default: str | None = "faithful"
                     ) -> None:
    """``--data``, ``--key``, ``--columns`` and ``--standardize`` of the commands on tabular
    data."""
    parser.add_argument(
        "--data", metavar="SOURCE", default=default,
        help=f"bundled name or a .csv/.npz/.npy path (default {default})",
    )
    parser.add_argument(
        "--key", metavar="NAME",
        help="the array of a --data FILE.npz to read (needed when the archive holds several; "
        "refused for a CSV file) (default: the archive's only array)",
    )
    parser.add_argument("--columns", metavar="A,B",
                        help="comma-separated columns to use (default: all)")
    parser.add_argument("--standardize", action="store_true",
                        help="centre and scale each column (default: off)")


def columns_of(args: argparse.Namespace) -> list[str] | None:
    """The ``--columns`` list, or ``None`` for every column."""
    if not args.columns:
        return None
    return [c.strip() for c in args.columns.split(",") if c.strip()]


def add_output_options(
    parser: argparse.ArgumentParser, *, default: str, resumable: bool = False
) -> None:
    """``--out``, ``--overwrite`` (and ``--resume`` where a run writes checkpoints) and
    ``--quiet``; see :mod:`ppl_models.cli.output` for what they guarantee."""
    parser.add_argument(
        "--out", metavar="DIR", type=Path,
        help=f"output folder, replaced as a whole at the end of the run (default {default})",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--overwrite", action="store_true",
        help="start again even though --out holds the checkpoint of an earlier run "
        "(default: off)",
    )
    if resumable:
        group.add_argument(
            "--resume", action="store_true",
            help="continue the run whose checkpoint is in --out (or was left by an "
            "interrupted run) with the same numbers as an uninterrupted run (default: off)",
        )
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar, no estimate, no summary (default: off)")


def progress_of(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: never with ``--quiet``, else when standard error is a
    terminal."""
    return show_progress(False if args.quiet else None)


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Append its default to the help of every option of ``parser`` whose help does not
    state one (``--help`` shows every default); returns ``parser``."""
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        text = action.help or ""
        if "default" in text:
            continue
        if action.default is None or action.default is False:
            suffix = "(default: off)" if action.default is False else "(default: none)"
        else:
            suffix = "(default %(default)s)"
        action.help = f"{text} {suffix}".strip()
    return parser
