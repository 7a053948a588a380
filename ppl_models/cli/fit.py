"""``ppl-models fit MODEL``: one sub-subcommand per model family, each with its own options.

The mixtures of :data:`ppl_models.models.MIXTURES` share :mod:`ppl_models.cli.fit_mixture`;
``vae`` (with every latent prior and the GMVAE) is :mod:`ppl_models.cli.fit_vae`.
``ppl-models fit`` with no model (``ppl-models fit --out DIR``) fits :data:`DEFAULT_MODEL`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ppl_models.cli import fit_adversarial, fit_mixture, fit_vae

__all__ = ["DEFAULT_MODEL", "add_subcommand", "fit_commands", "with_default_model"]

#: What ``ppl-models fit`` fits when no model is named.
DEFAULT_MODEL = "gmm"


def fit_commands() -> dict[str, Callable[[Any, str], argparse.ArgumentParser]]:
    """``fit`` target -> function(subparsers, name) registering its parser: every mixture of
    the model registry, and the VAE family."""
    commands: dict[str, Callable[[Any, str], argparse.ArgumentParser]] = {
        name: fit_mixture.add_parser for name in fit_mixture.mixture_names()
    }
    commands["vae"] = fit_vae.add_parser
    commands.update(dict.fromkeys(fit_adversarial.MODELS, fit_adversarial.add_parser))
    return commands


def add_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fit`` and its model sub-subcommands; returns the ``fit`` parser."""
    parser = subparsers.add_parser(
        "fit",
        prog="ppl-models fit",
        help="fit a model and write metrics, summary, ArviZ data and plots",
        description=f"Fit a model; with no model, {DEFAULT_MODEL} (ppl-models fit "
        f"{DEFAULT_MODEL} --help lists its options).",
    )
    models = parser.add_subparsers(dest="model", required=True, metavar="MODEL")
    for name, add_parser in fit_commands().items():
        add_parser(models, name)
    return parser


def with_default_model(argv: list[str]) -> list[str]:
    """``argv`` with :data:`DEFAULT_MODEL` inserted after a ``fit`` that names no model
    (``fit``, ``fit --out DIR``; ``fit --help`` still shows the list of models)."""
    if argv[:1] != ["fit"]:
        return argv
    rest = argv[1:]
    if not rest or (rest[0].startswith("-") and rest[0] not in ("-h", "--help")):
        return ["fit", DEFAULT_MODEL, *rest]
    return argv
