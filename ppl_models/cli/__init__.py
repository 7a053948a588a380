"""The ``ppl-models`` command: one module per subcommand.

======================= ===================================================================
``fit MODEL``           :mod:`.fit` (mixtures: :mod:`.fit_mixture`; VAEs: :mod:`.fit_vae`)
``compare-guides``      :mod:`.compare_guides`
``select-k``            :mod:`.select_k`
======================= ===================================================================

Shared pieces: argument types and option groups (:mod:`.arguments`), output folders that are
whole or absent (:mod:`.output`); warnings are printed by
:mod:`ppl_models._shared.warning_capture`. Only the console entry point (the ``ppl-models``
script and ``python -m ppl_models``) imports this package.

Exit status: 0 on success; 2 for a usage error, bad input, an unusable ``--out`` or a failed
write, with one line on standard error; 130 after Ctrl-C, with one line.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from ppl_models.cli.output import OutputError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, built from the registries as they are now."""
    from ppl_models.cli import compare_guides, fit, select_k
    from ppl_models.cli.arguments import Parser

    parser = Parser(
        prog="ppl-models",
        description="Latent-variable models in Pyro, fitted by EM, SVI or NUTS.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (fit, compare_guides, select_k):
        module.add_subcommand(commands)
    return parser


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _print_uninterrupted(line: str) -> None:
    """Print ``line`` to standard error with Ctrl-C held off, so a second one cannot cut it."""
    if threading.current_thread() is not threading.main_thread():
        print(line, file=sys.stderr)
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        print(line, file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ppl-models`` command; returns the exit status."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        from ppl_models.cli.fit import with_default_model
        args = build_parser().parse_args(
            with_default_model(list(sys.argv[1:] if argv is None else argv))
        )
        return args.run(args)
    except KeyboardInterrupt as exc:
        notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", []))
        _print_uninterrupted(f"ppl-models: interrupted{notes}")
        return 130
    except (OutputError, ValueError, FloatingPointError, OSError) as exc:
        print(f"ppl-models: error: {_first_line(exc)}", file=sys.stderr)
        return 2
