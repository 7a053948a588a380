"""Argument types shared by every ``ppl-models`` subcommand (usage errors in plain words)."""

from __future__ import annotations

import argparse

__all__ = ["non_negative_int", "positive_float", "positive_int"]


def _whole_number(text: str, lowest: int, words: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"expected a {words} whole number; got {value}")
    return value


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number of at least 1."""
    return _whole_number(text, 1, "positive")


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: a whole number of at least 0."""
    return _whole_number(text, 0, "non-negative")


def positive_float(text: str) -> float:
    """An ``argparse`` type: a finite number above 0 (e.g. seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text}")
    return value
