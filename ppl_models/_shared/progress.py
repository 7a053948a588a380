"""Whether to draw a progress bar."""

from __future__ import annotations

import sys

__all__ = ["show_progress"]


def show_progress(progress: bool | None) -> bool:
    """``progress`` itself when given; for ``None``, whether standard error is a terminal
    (a bar in a log file or a captured stream is noise).

    Raises
    ------
    ValueError
        ``progress`` is neither a bool nor ``None``.
    """
    if progress is None:
        stream = sys.stderr
        return stream is not None and not stream.closed and stream.isatty()
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be True, False or None; got {progress!r}")
    return progress
