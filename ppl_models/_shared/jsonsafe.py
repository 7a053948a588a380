"""Values to strict JSON: no bare ``NaN`` or ``Infinity`` ever reaches a file.

JSON has no non-finite numbers; Python's ``json`` writes them as ``NaN``/``Infinity``, which
other readers refuse. :func:`jsonable` turns a non-finite float into ``null``, NumPy and
PyTorch values into plain numbers and lists, recursively, and :func:`to_json` writes the
result with ``allow_nan=False`` so that a value it missed fails loudly instead.
:func:`read_json` is the reading side for files a user hands us: every failure is one
``ValueError`` naming the file (not UTF-8, not JSON, nested too deeply to parse).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["jsonable", "read_json", "to_json"]


def _key(key: Any) -> str | int | float | bool | None:
    if isinstance(key, np.generic):
        key = key.item()
    if key is None or isinstance(key, str | int | float | bool):
        return key
    return str(key)


def jsonable(value: Any) -> Any:
    """``value`` with every part JSON can hold: non-finite floats -> ``None``; NumPy scalars
    and arrays, tensors -> numbers and nested lists; tuples and sets -> lists; paths -> str;
    mappings recursively (keys that JSON cannot hold become their ``str``).

    Raises
    ------
    TypeError
        A value of another type (say which, rather than writing its ``repr``).
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor):
        return jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray | np.generic):
        return jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [jsonable(v) for v in items]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write a {type(value).__name__} to JSON: {value!r}")


def to_json(value: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of :func:`jsonable` ``(value)``, ending with a newline."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False) + "\n"


def read_json(path: Path, missing: str = "not found") -> Any:
    """The JSON value in the file ``path`` (strict UTF-8; ``NaN``/``Infinity`` are read as
    Python's, for files written before :func:`to_json` existed).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        Naming ``path``: not a readable regular file, not UTF-8, not JSON, or nested too
        deeply to parse.
    """
    from ppl_models._shared.files import read_bytes

    blob = read_bytes(path, missing)
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text (byte 0x{blob[exc.start]:02x} at position {exc.start}); "
            "corrupt or another format"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt, not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: corrupt, JSON nested too deeply to read") from None
