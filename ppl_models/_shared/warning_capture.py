"""Record the warnings raised during a call and print them afterwards, one line each."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["captured_warnings", "print_warnings"]


def print_warnings(
    messages: list[str], *, prefix: str = "ppl-models", stream: TextIO | None = None
) -> None:
    """Print each distinct message once, in order, as ``"<prefix>: warning: <first line>"``."""
    stream = sys.stderr if stream is None else stream
    seen: set[str] = set()
    for message in messages:
        line = str(message).strip().splitlines()[0] if str(message).strip() else "(empty)"
        if line not in seen:
            seen.add(line)
            print(f"{prefix}: warning: {line}", file=stream)


@contextmanager
def captured_warnings(
    *,
    prefix: str = "ppl-models",
    category: type[Warning] = UserWarning,
    stream: TextIO | None = None,
) -> Iterator[list[str]]:
    """Record warnings of ``category`` (every occurrence, not once per place) inside the
    block and print them with :func:`print_warnings` when the block ends normally.

    Yields a list the block may append notes of its own to; on exit the recorded warnings
    are put before those notes and everything is printed. When the block raises, nothing is
    printed (the error's one line is the whole story) and the exception propagates.

    Examples
    --------
    >>> with captured_warnings() as notes:          # doctest: +SKIP
    ...     result = fit(...)
    ...     notes.append("the chain did not mix")
    """
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category)
        yield notes
    notes[:0] = [str(w.message) for w in caught]
    print_warnings(notes, prefix=prefix, stream=stream)
