"""Reading files a user hands us: one ``ValueError`` naming the file and the problem.

Loaders (:mod:`ppl_models.data`, :mod:`ppl_models.images`, saved fit results and checkpoints)
read through these helpers so that a directory, a symbolic-link loop, a pipe, a truncated
archive or a file holding pickled code ends in one line that names the file, never in an
``IsADirectoryError``, ``UnpicklingError`` or a reader's advice to unpickle. Only a file that
is truly absent raises ``FileNotFoundError`` (an ``OSError``, which the command line reports
as one line with exit status 2 as well).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["first_sentence", "load_tensor_file", "read_bytes", "regular_file"]


def first_sentence(exc: BaseException) -> str:
    """The first line (and sentence) of ``exc``'s message, or its type's name."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    cut = line.find(". ")
    return line[: cut + 1] if cut > 0 else line


def regular_file(path: Path, missing: str = "not found") -> Path:
    """``path`` if it is a regular file that can be opened.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path`` (the message is ``"{path}: {missing}"``).
    ValueError
        A directory, a symbolic link to nothing or in a loop, a pipe, device or socket (reading
        a pipe would wait forever), or a path that cannot be looked at.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise ValueError(
                f"{path}: a symbolic link to nothing ({os.readlink(path)} does not exist)"
            ) from None
        raise FileNotFoundError(f"{path}: {missing}") from None
    except OSError as exc:  # a link loop (ELOOP), a name too long, a component not a folder
        raise ValueError(f"{path}: cannot be read ({(exc.strerror or str(exc)).lower()})") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"{path}: is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: not a regular file (a pipe, device or socket)")
    return path


def read_bytes(path: Path, missing: str = "not found") -> bytes:
    """The bytes of the regular file ``path`` (see :func:`regular_file` for the errors)."""
    regular_file(path, missing)
    try:
        return path.read_bytes()
    except OSError as exc:  # permissions, an I/O error
        raise ValueError(f"{path}: cannot be read ({(exc.strerror or str(exc)).lower()})") from None


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|Unsupported operand (\d+)")


def load_tensor_file(path: Path, what: str, written_by: str, missing: str = "not found") -> Any:
    """``torch.load(path, weights_only=True)``, every failure a ``ValueError`` naming ``path``.

    ``weights_only=True`` loads tensors, containers and plain values only: a file that names
    any other object (code that would run on loading) is refused before anything in it runs,
    and the message says which object it named, never how to load it anyway. Messages read
    ``"corrupt {what} {path}: ..."``.
    """
    blob = read_bytes(path, missing)
    try:
        return torch.load(io.BytesIO(blob), weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found and found.group(1):
            raise ValueError(
                f"corrupt {what} {path}: holds objects that are not plain tensors (it names "
                f"{found.group(1)}); not written by {written_by}, and nothing in it was run"
            ) from None
        operation = f"unsupported pickle operation {found.group(2)}" if found else "unreadable"
        raise ValueError(
            f"corrupt {what} {path}: not a tensor file ({operation}): truncated, or not written "
            f"by {written_by}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError,
            IndexError, TypeError, AttributeError, MemoryError, UnicodeDecodeError) as exc:
        detail = str(exc).strip() and f": {first_sentence(exc)}"
        raise ValueError(
            f"corrupt {what} {path}: truncated, or not written by {written_by} "
            f"({type(exc).__name__}{detail})"
        ) from None
