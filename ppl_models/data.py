"""Loading and validating data sets.

Two entry points:

* :func:`load` reads a bundled data set (see :data:`BUNDLED`) or a user's ``.csv`` / ``.npz``
  file into a 2-D float tensor of shape ``(n_samples, n_features)``.
* :func:`check_data` validates a tensor or NumPy array that a user passes to a model or driver
  directly.

For data larger than memory: :func:`open_npy` maps a ``.npy`` file without reading it
(:func:`numpy.load` with ``mmap_mode="r"``), :func:`memmap_tensor` wraps such a map as a tensor
without a copy, and :func:`csv_to_npy` converts a large CSV file into a ``.npy`` file a block of
rows at a time; the EM and minibatch drivers then read the rows block by block
(:mod:`ppl_models.infer.chunks`).

Both refuse bad input (wrong shape, non-numeric values, NaN / infinite values, empty data) with a
``ValueError`` whose message names the problem, instead of letting it surface later as a cryptic
error or a silently wrong fit.

Bundled files live in the repository's top-level ``data/`` folder, found as
``Path(__file__).resolve().parent.parent / "data"``; this works from a source checkout and from an
editable install. Set the environment variable ``PPL_MODELS_DATA_DIR`` to use another folder.
"""

from __future__ import annotations

import csv
import mmap
import os
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ppl_models._shared.files import regular_file

__all__ = [
    "BUNDLED",
    "DATA_DIR_ENV",
    "check_data",
    "check_features",
    "check_unit_interval",
    "csv_to_npy",
    "data_dir",
    "load",
    "memmap_tensor",
    "open_npy",
]

#: Bundled data set names mapped to file names under the data folder (see :func:`data_dir`).
BUNDLED: dict[str, str] = {
    "faithful": "faithful.csv",
}

#: Environment variable that overrides the folder holding the bundled files.
DATA_DIR_ENV = "PPL_MODELS_DATA_DIR"

_SUPPORTED_SUFFIXES = (".csv", ".npz", ".npy")

#: Rows checked at a time by :func:`check_data` (bounded temporaries on large or mapped data).
_CHECK_ROWS = 1 << 16
_EXPECTED_2D = "expected a 2-D array (n_samples, n_features)"


def data_dir() -> Path:
    """Return the folder that holds the bundled data files.

    Returns
    -------
    pathlib.Path
        ``$PPL_MODELS_DATA_DIR`` if that environment variable is set and non-empty, else the
        repository's ``data/`` folder (``Path(__file__).resolve().parent.parent / "data"``).
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parent.parent / "data"


def load(
    name_or_path: str | os.PathLike[str],
    columns: Sequence[str | int] | str | int | None = None,
    standardize: bool = False,
    dtype: torch.dtype = torch.float64,
    *,
    key: str | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Load a bundled data set or a ``.csv`` / ``.npz`` file as a 2-D tensor.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A bundled name (a key of :data:`BUNDLED`, e.g. ``"faithful"``) or a path to a file whose
        name ends in ``.csv`` (read with :func:`pandas.read_csv`; the first line is the header) or
        ``.npz`` (read with :func:`numpy.load` with ``allow_pickle=False``). A string is treated as
        a bundled name first. A CSV file's delimiter (``,``, ``;``, tab or ``|``) is the one
        that splits every row into as many fields as the header; with a delimiter other than
        ``,``, numbers written with a decimal comma (``1,5``) are read as such. A file whose
        rows do not all have the header's number of fields is refused (pandas would silently
        turn the first column into row labels when rows have one field more).
    columns : sequence of str or int, str, int, optional
        Columns to keep, in this order. For a CSV file, column names. For an ``.npz`` array,
        integer column indices (negative indices count from the end). A single name or index is
        accepted as a one-element list. Default: all columns.
    standardize : bool, default False
        If True, subtract each column's mean and divide by its standard deviation computed with
        ``ddof=1`` (the sample standard deviation, as R's ``sd``/``scale``). The arithmetic is
        done in float64 before casting to `dtype`.
    dtype : torch.dtype, default torch.float64
        Floating-point dtype of the returned tensor. float64 by default: in float32 values near
        ``1e8`` are 8 apart, so timestamps, incomes or counts with an offset lose their spread.
        A value beyond float32's range is refused as one that "overflows float32".
    key : str, optional
        For an ``.npz`` archive, the name of the array to load. May be omitted when the archive
        holds exactly one array. Not allowed for CSV files.

    Returns
    -------
    x : torch.Tensor
        Tensor of shape ``(n_samples, n_features)`` and dtype `dtype`.
    names : list of str
        Column names: the CSV header names, or ``"<key>[<j>]"`` for column ``j`` of an ``.npz``
        array.

    Raises
    ------
    FileNotFoundError
        If the file (or a bundled data set's file) does not exist.
    ValueError
        If the name is neither a bundled name nor a ``.csv`` / ``.npz`` path; the file cannot be
        parsed; its rows do not match its header; a requested column or key does not exist; a
        cell is not a number (the message names its column and row); the data hold NaN or
        infinite values, or values that overflow the requested `dtype`; the data are empty; an
        ``.npz`` array is not 2-D; or, with ``standardize=True``, a column has zero variance or
        there are fewer than 2 rows.

    Warns
    -----
    UserWarning
        If a CSV file has a column pandas named ``"Unnamed: <j>"`` (typically a saved row index,
        e.g. from R's ``write.csv`` or pandas' ``to_csv(index=True)``) and `columns` is None, so
        the row numbers would be used as a feature.

    Examples
    --------
    >>> x, names = load("faithful")
    >>> tuple(x.shape), names
    ((272, 2), ['eruptions', 'waiting'])
    >>> x.dtype
    torch.float64
    >>> x, names = load("faithful", columns=["waiting"], standardize=True)
    >>> tuple(x.shape)
    (272, 1)
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    path = _resolve(name_or_path)
    selected = _normalise_columns(columns)

    if path.suffix.lower() == ".csv":
        if key is not None:
            raise ValueError(f"{path}: key={key!r} only applies to .npz files, not CSV files")
        arr, names = _read_csv(path, selected)
    elif path.suffix.lower() == ".npy":
        if key is not None:
            raise ValueError(f"{path}: key={key!r} only applies to .npz files, not .npy files")
        arr, names = _select_npy(path, open_npy(path), selected)
    else:
        arr, names = _read_npz(path, selected, key)

    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{path}: data are empty ({arr.shape[0]} rows, {arr.shape[1]} columns)")
    _check_finite_columns(arr, names, str(path))
    if standardize:
        arr = _standardize(arr, names, str(path))
    _check_range(arr, names, str(path), dtype)
    # Copy: pandas may hand back a read-only view, which torch cannot wrap safely.
    return torch.from_numpy(np.array(arr, dtype=np.float64, copy=True)).to(dtype), names


def check_features(data: torch.Tensor, expected: int, *, what: str, hint: str = "") -> None:
    """Refuse ``(N, D)`` data whose ``D`` is not the ``expected`` width: ``what`` names the
    model's side (e.g. ``"the model takes"``), ``hint`` is added in parentheses."""
    if data.shape[1] != expected:
        tail = f" ({hint})" if hint else ""
        raise ValueError(
            f"{what} {expected} features per observation; the data have {data.shape[1]}{tail}"
        )


def check_unit_interval(data: torch.Tensor, *, needed_by: str, alternative: str) -> None:
    """Refuse data outside [0, 1] for the setting ``needed_by`` (e.g.
    ``"output='unit'"``), naming the range found and the ``alternative`` setting."""
    if bool(((data < 0) | (data > 1)).any()):
        raise ValueError(
            f"{needed_by} needs data in [0, 1]; got values in [{float(data.min()):.4g}, "
            f"{float(data.max()):.4g}] (rescale them or use {alternative})"
        )


def check_data(x: object, *, name: str = "data") -> torch.Tensor:
    """Validate data passed directly to a model or driver and return it as a tensor.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray or array-like
        The data, shape ``(n_samples, n_features)``. Other array-likes (lists, DataFrames) are
        converted with :func:`numpy.asarray` first.
    name : str, default "data"
        What to call `x` in error messages (e.g. the argument name).

    Returns
    -------
    torch.Tensor
        `x` as a tensor: float64 if `x` is float64, or integers that float32 cannot hold
        exactly (magnitude above :math:`2^{24}`, e.g. timestamps), otherwise float32. A tensor
        input keeps its device (and autograd graph); a NumPy input is copied, so later in-place
        changes to the tensor do not alter the caller's array.

    Raises
    ------
    ValueError
        If `x` is not numeric (strings, objects, complex numbers), is not 2-D, is empty (0 rows
        or 0 columns), or holds NaN or infinite values.

    Examples
    --------
    >>> import numpy as np
    >>> check_data(np.zeros((3, 2))).dtype
    torch.float64
    >>> check_data(np.zeros(3))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: data: expected a 2-D array (n_samples, n_features), got shape (3,)...
    """
    if isinstance(x, np.memmap) and x.dtype in (np.float32, np.float64):
        t = memmap_tensor(x)  # no copy: the rows stay on disk until read
    elif isinstance(x, torch.Tensor):
        if x.is_complex():
            raise ValueError(f"{name}: expected real numeric values, got dtype {x.dtype}")
        wide = x.dtype == torch.float64 or _large_integers(x)
        t = x.to(torch.float64 if wide else torch.float32)
    else:
        try:
            a = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: could not convert {type(x).__name__} to an array: "
                             f"{exc}") from exc
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{name}: expected real numeric values, got dtype {a.dtype}")
        wide = a.dtype == np.float64 or _large_integers(a)
        target_np = np.float64 if wide else np.float32
        t = torch.from_numpy(np.array(a, dtype=target_np, copy=True))

    if t.ndim != 2:
        hint = ("; for a single feature use x.reshape(-1, 1)" if t.ndim == 1 else "")
        raise ValueError(f"{name}: {_EXPECTED_2D}, got shape {tuple(t.shape)}{hint}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: data are empty (shape {tuple(t.shape)})")
    n_nan = n_inf = 0
    for start in range(0, t.shape[0], _CHECK_ROWS):  # bounded temporaries on large data
        block = t[start : start + _CHECK_ROWS]
        if bool(torch.isfinite(block.sum())):
            continue  # a NaN or an infinity would make the sum NaN or infinite: none here
        n_nan += int(torch.isnan(block).sum())
        n_inf += int(torch.isinf(block).sum())
    if n_nan or n_inf:
        raise ValueError(f"{name}: contains {n_nan} NaN and {n_inf} infinite value(s); "
                         "remove or impute them first")
    return t




def open_npy(path: str | os.PathLike[str]) -> np.memmap:
    """Map a 2-D numeric ``.npy`` file into memory without reading it.

    Only the header is read (``numpy.load(path, mmap_mode="r", allow_pickle=False)``); the
    rows are read from disk when touched. Values are not checked here: the drivers check each
    block of rows as they read it.

    Raises
    ------
    ValueError
        Not a ``.npy`` file, not 2-D, empty, or not real numbers.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        regular_file(path, "not found")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .npy file: {_describe(exc)}") from exc
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        shape = getattr(arr, "shape", None)
        raise ValueError(f"{path}: {_EXPECTED_2D}, got shape {shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected real numeric values, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{path}: data are empty (shape {arr.shape})")
    return arr


def memmap_tensor(arr: np.memmap) -> torch.Tensor:
    """A tensor over the same file as the memory map ``arr``, without reading it.

    The file is mapped again copy-on-write (``mode="c"``): the tensor is writable, as torch
    requires, and a change to it stays in this process, never reaching the file. A view of a
    map (a slice), or a dtype other than float32/float64, is copied into memory instead.
    """
    whole = isinstance(arr.base, mmap.mmap) and arr.flags.c_contiguous
    if not whole or arr.dtype not in (np.float32, np.float64) or arr.filename is None:
        wide = np.float64 if arr.dtype == np.float64 or _large_integers(arr) else np.float32
        return torch.from_numpy(np.array(arr, dtype=wide, copy=True))
    private = np.memmap(arr.filename, dtype=arr.dtype, mode="c", offset=arr.offset,
                        shape=arr.shape, order="C")
    return torch.from_numpy(private)


def csv_to_npy(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
    *,
    chunk_rows: int = 1 << 16,
) -> tuple[np.memmap, list[str]]:
    """Convert a numeric CSV file into a float64 ``.npy`` file, ``chunk_rows`` rows at a time.

    For CSV files larger than memory: the delimiter and decimal mark are found from the first
    1,000 lines (as :func:`load` does from all of them), then pandas reads the file in blocks
    (two passes: the row count, then the values), each checked for non-numeric, NaN and
    infinite cells, and written into ``out`` (:func:`numpy.lib.format.open_memmap`).

    Returns
    -------
    (numpy.memmap, list of str)
        ``out`` mapped read-only (:func:`open_npy`), and the column names.

    Raises
    ------
    ValueError
        As :func:`load` for a CSV file, naming the block's rows.
    """
    path = _resolve(path)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{path}: csv_to_npy reads a .csv file")
    sep, decimal, header = _csv_head_layout(path)
    names = list(header) if columns is None else [str(c) for c in columns]
    unknown = [c for c in names if c not in header]
    if unknown:
        raise ValueError(f"{path}: unknown column(s) {unknown}; available columns: {header}")

    def blocks():
        try:
            yield from pd.read_csv(path, sep=sep, decimal=decimal, index_col=False,
                                   usecols=names, chunksize=chunk_rows)
        except (ValueError, OSError) as exc:  # ParserError: a row of the wrong width
            raise ValueError(f"{path}: could not parse the CSV file: "
                             f"{type(exc).__name__}: {exc}") from exc

    n = sum(len(block) for block in blocks())
    if n == 0:
        raise ValueError(f"{path}: data are empty (0 rows, {len(names)} columns)")
    target = np.lib.format.open_memmap(Path(out), mode="w+", dtype=np.float64,
                                       shape=(n, len(names)))
    start = 0
    for block in blocks():
        block = block[names]
        for c in names:
            if not pd.api.types.is_numeric_dtype(block[c]):
                raise ValueError(f"{path}: column {c!r} is not numeric in rows {start + 1}.."
                                 f"{start + len(block)}")
        values = block.to_numpy(dtype=np.float64, na_value=np.nan)
        _check_finite_columns(values, names, f"{path} (rows {start + 1}..{start + len(block)})")
        target[start : start + len(block)] = values
        start += len(block)
    target.flush()
    del target
    return open_npy(out), names


# --------------------------------------------------------------------------------------------
# helpers


def _csv_head_layout(path: Path, lines: int = 1000) -> tuple[str, str, list[str]]:
    """Delimiter, decimal mark and header of a CSV file, from its first ``lines`` lines."""
    with path.open(encoding="utf-8", newline="") as fh:
        head = [line for _, line in zip(range(lines), fh, strict=False)]
    if not head:
        raise ValueError(f"{path}: data are empty (no header and no rows)")
    best: tuple[int, str] | None = None
    for sep in _DELIMITERS:
        rows = [row for row in csv.reader(head, delimiter=sep) if row]
        width = len(rows[0])
        if all(len(row) == width for row in rows) and (best is None or width > best[0]):
            best = (width, sep)
    if best is None:
        raise ValueError(f"{path}: the first {len(head)} lines do not all have the header's "
                         "number of fields for any delimiter (',', ';', tab, '|')")
    sep = best[1]
    rows = [row for row in csv.reader(head, delimiter=sep) if row]
    cells = [cell for row in rows[1:] for cell in row]
    decimal = "."
    if sep != "," and any(_DECIMAL_COMMA.match(c) for c in cells) and not any(
        _DECIMAL_POINT.match(c) for c in cells
    ):
        decimal = ","
    return sep, decimal, [c.strip() for c in rows[0]]


def _select_npy(path: Path, arr: np.ndarray, columns: list[str | int] | None
                ) -> tuple[np.ndarray, list[str]]:
    """Selected columns of a ``.npy`` array (integer indices), read into memory as float64."""
    d = arr.shape[1]
    index = list(range(d)) if columns is None else columns
    for c in index:
        if not isinstance(c, int) or not -d <= c < d:
            raise ValueError(f"{path}: .npy columns are integer indices in [-{d}, {d}); "
                             f"got {c!r}")
    index = [c % d for c in index]
    return np.asarray(arr[:, index], dtype=np.float64), [f"x[{j}]" for j in index]


def _large_integers(x: torch.Tensor | np.ndarray) -> bool:
    """Integers beyond float32's exact range (2**24), which float32 would round."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool or x.numel() == 0:
            return False
        return bool(x.abs().max() > 2**24)
    if x.dtype.kind not in "iu" or x.size == 0:
        return False
    return bool(np.abs(x.astype(np.float64)).max() > 2**24)


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """Turn a bundled name or a path into an existing ``.csv`` / ``.npz`` path."""
    if isinstance(name_or_path, str) and name_or_path in BUNDLED:
        path = data_dir() / BUNDLED[name_or_path]
        if not path.is_file():
            raise FileNotFoundError(
                f"bundled data set {name_or_path!r}: file {path} not found; the data folder is "
                f"the repository's data/ (or ${DATA_DIR_ENV} if set)")
        return path
    if not isinstance(name_or_path, str | os.PathLike):
        raise ValueError(f"expected a bundled name or a path, got {type(name_or_path).__name__}")

    path = Path(name_or_path).expanduser()
    suffix = path.suffix.lower()
    known = ", ".join(repr(n) for n in sorted(BUNDLED))
    if suffix not in _SUPPORTED_SUFFIXES:
        if suffix == "" and isinstance(name_or_path, str) and os.sep not in name_or_path:
            raise ValueError(f"unknown bundled data set {name_or_path!r}; known names: {known}. "
                             "A file path must end in .csv, .npz or .npy")
        raise ValueError(f"{path}: unsupported file extension {path.suffix!r}; "
                         f"expected .csv, .npz or .npy (or a bundled name: {known})")
    if not path.is_file():
        hint = ""
        if path.stem in BUNDLED and not path.parent.name:
            hint = f" (for the bundled data set, pass the name {path.stem!r} without extension)"
        if path.is_dir():
            raise FileNotFoundError(f"{path}: is a directory, not a file{hint}")
        regular_file(path, f"not found{hint}")  # a link loop, a pipe: ValueError saying which
    return path


def _normalise_columns(columns: Sequence[str | int] | str | int | None) -> list[str | int] | None:
    """Validate the `columns` argument and return it as a list (or None for all)."""
    if columns is None:
        return None
    if isinstance(columns, str | int | np.integer):
        columns = [columns]
    out: list[str | int] = []
    for c in columns:
        if isinstance(c, bool) or not isinstance(c, str | int | np.integer):
            raise ValueError(f"columns must hold names (str) or indices (int), got {c!r}")
        c = c if isinstance(c, str) else int(c)
        if c in out:
            raise ValueError(f"column {c!r} is listed more than once in columns")
        out.append(c)
    return out


def _read_csv(path: Path, columns: list[str | int] | None) -> tuple[np.ndarray, list[str]]:
    """Read a CSV file and return the selected numeric columns as a float64 array."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8192)
    except OSError as exc:
        raise ValueError(f"{path}: could not read the file: {exc}") from exc
    if b"\x00" in head:
        raise ValueError(f"{path}: could not parse the CSV file: it contains NUL bytes "
                         "(a binary file, not text)")
    layout = _csv_layout(path)
    if layout is None:
        raise ValueError(f"{path}: data are empty (no header and no rows)")
    try:
        df = pd.read_csv(path, sep=layout.sep, decimal=layout.decimal, index_col=False)
    except pd.errors.EmptyDataError as exc:
        raise ValueError(f"{path}: data are empty (no header and no rows)") from exc
    except (ValueError, OSError) as exc:  # ParserError, ...
        raise ValueError(f"{path}: could not parse the CSV file: "
                         f"{type(exc).__name__}: {exc}") from exc

    all_names = [str(c) for c in df.columns]
    df.columns = pd.Index(all_names)
    if columns is None:
        unnamed = [c for c in all_names if c.startswith("Unnamed: ")]
        if unnamed:
            warnings.warn(
                f"{path}: column(s) {unnamed} have no header name; this is usually a saved row "
                "index (e.g. from R's write.csv or pandas' to_csv(index=True)) and will be used "
                "as a feature. Pass columns=[...] to choose the columns explicitly.",
                UserWarning, stacklevel=3)
        names = all_names
    else:
        for c in columns:
            if not isinstance(c, str):
                raise ValueError(f"{path}: CSV columns are selected by name, got index {c!r}; "
                                 f"available columns: {all_names}")
            if c not in all_names:
                raise ValueError(f"{path}: unknown column {c!r}; available columns: {all_names}")
        names = [str(c) for c in columns]

    sub = df[names]
    if sub.shape[0] == 0 or sub.shape[1] == 0:
        raise ValueError(f"{path}: data are empty ({sub.shape[0]} rows, {sub.shape[1]} columns)")
    for c in names:
        s = sub[c]
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_complex_dtype(s):
            raise ValueError(_non_numeric_message(path, c, s, layout))
    return sub.to_numpy(dtype=np.float64, na_value=np.nan), names


class _Layout:
    """Delimiter, decimal mark and the file line of every data row of a CSV file."""

    def __init__(self, sep: str, decimal: str, lines: list[int]) -> None:
        self.sep, self.decimal, self.lines = sep, decimal, lines


_DELIMITERS = (",", ";", "\t", "|")
_DECIMAL_COMMA = re.compile(r"^\s*[+-]?\d*,\d+([eE][+-]?\d+)?\s*$")
_DECIMAL_POINT = re.compile(r"^\s*[+-]?\d*\.\d+([eE][+-]?\d+)?\s*$")


def _csv_rows(path: Path, sep: str) -> list[tuple[int, list[str]]]:
    """Non-blank rows of a CSV file split at ``sep``, each with its line number."""
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter=sep)
            return [(reader.line_num, row) for row in reader if row]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: could not parse the CSV file: "
                         f"{type(exc).__name__}: {exc}") from exc


def _csv_layout(path: Path) -> _Layout | None:
    """Find the delimiter that splits every row like the header, and the decimal mark.

    Refuses a file in which no candidate delimiter gives every row the header's number of
    fields (pandas would otherwise shift a row with one extra field into the index, or read a
    ``;``-separated file as one text column). ``None`` for a file without any row.
    """
    parsed = {sep: _csv_rows(path, sep) for sep in _DELIMITERS}
    if not parsed[","]:
        return None
    consistent = []
    for sep, rows in parsed.items():
        width = len(rows[0][1])
        if all(len(row) == width for _, row in rows):
            consistent.append((width, sep))
    multi = [(w, sep) for w, sep in consistent if w > 1]
    if multi:
        sep = max(multi, key=lambda ws: (ws[0], -_DELIMITERS.index(ws[1])))[1]
    elif (1, ",") in consistent:
        sep = ","  # one column
    elif _one_column_of_decimal_commas(parsed[";"]):
        sep = ";"  # one column, numbers like 1,5 (no ';' anywhere: every row is one field)
    else:
        rows = parsed[","]
        width = len(rows[0][1])
        line, row = next((ln, r) for ln, r in rows if len(r) != width)
        raise ValueError(
            f"{path}: line {line} has {len(row)} field(s) but the header has {width} (delimiter "
            "','; ';', tab and '|' do not fit every row either); a row with one field more than "
            "the header would silently lose a column to the row labels: fix the file"
        )
    rows = parsed[sep]
    if len(rows[0][1]) == 1:
        # One column: an empty line after the header is a missing value, not a blank line.
        lines = path.read_text(encoding="utf-8").splitlines()
        gap = next((i + 1 for i, line in enumerate(lines) if i > 0 and not line.strip()), None)
        if gap is not None:
            raise ValueError(f"{path}: line {gap} is empty: in a one-column file that is a "
                             "missing value; remove or impute it")
    cells = [cell for _, row in rows[1:101] for cell in row]
    decimal = "."
    if sep != "," and any(_DECIMAL_COMMA.match(c) for c in cells) and not any(
        _DECIMAL_POINT.match(c) for c in cells
    ):
        decimal = ","
    return _Layout(sep, decimal, [line for line, _ in rows[1:]])


def _one_column_of_decimal_commas(rows: list[tuple[int, list[str]]]) -> bool:
    """A one-column file whose cells all read as numbers with a decimal comma."""
    if any(len(row) != 1 for _, row in rows):
        return False
    cells = [row[0] for _, row in rows[1:]]
    return bool(cells) and all(
        _DECIMAL_COMMA.match(c) or re.fullmatch(r"\s*[+-]?\d*\s*", c) for c in cells
    ) and any(_DECIMAL_COMMA.match(c) for c in cells)


def _non_numeric_message(path: Path, column: str, values: pd.Series, layout: _Layout) -> str:
    """Name the column, row and file line of the first cell that is not a number."""
    text = values.astype(str)
    if layout.decimal == ",":
        text = text.str.replace(",", ".", regex=False)
    coerced = pd.to_numeric(text.where(values.notna()), errors="coerce")
    bad = np.flatnonzero((coerced.isna() & values.notna()).to_numpy())
    if bad.size == 0:
        return f"{path}: column {column!r} is not numeric (dtype {values.dtype})"
    i = int(bad[0])
    line = layout.lines[i] if i < len(layout.lines) else i + 2
    return (f"{path}: column {column!r} is not numeric: row {i + 1} (line {line} of the file) "
            f"holds {values.iloc[i]!r}")


def _read_npz(path: Path, columns: list[str | int] | None,
              key: str | None) -> tuple[np.ndarray, list[str]]:
    """Read one 2-D array from an ``.npz`` archive and return the selected columns."""
    # Open the file ourselves: np.load(path) leaks its file handle when the zip is corrupt.
    with path.open("rb") as fh:
        try:
            archive = np.load(fh, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: could not read the .npz file (corrupt or truncated?): "
                             f"{_describe(exc)}") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: not an .npz archive (it holds a single .npy array; "
                             "save arrays with numpy.savez)")
        with archive:
            keys = list(archive.files)
            if key is None:
                if not keys:
                    raise ValueError(f"{path}: data are empty (the archive holds no arrays)")
                if len(keys) > 1:
                    raise ValueError(f"{path}: the archive holds {len(keys)} arrays {keys}; "
                                     "choose one with key=...")
                key = keys[0]
            elif key not in keys:
                raise ValueError(f"{path}: no array {key!r} in the archive; "
                                 f"available keys: {keys}")
            try:
                raw = archive[key]
            except ValueError as exc:
                if "pickle" in str(exc):  # an object array: never offer to unpickle it
                    raise ValueError(f"{path}: could not read array {key!r} from the .npz file: "
                                     "it holds Python objects, not numbers; save a numeric "
                                     "array") from None
                raise ValueError(f"{path}: could not read array {key!r} from the .npz file "
                                 f"(corrupt or truncated?): {type(exc).__name__}") from exc
            except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
                raise ValueError(f"{path}: could not read array {key!r} from the .npz file "
                                 f"(corrupt or truncated?): {type(exc).__name__}: {exc}") from exc

    if not isinstance(raw, np.ndarray):
        raise ValueError(f"{path}: entry {key!r} of the archive is not a .npy array")
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"{path}: array {key!r} is not numeric (dtype {raw.dtype})")
    if raw.ndim != 2:
        hint = "; for a single feature save x.reshape(-1, 1)" if raw.ndim == 1 else ""
        raise ValueError(f"{path}: array {key!r}: {_EXPECTED_2D}, got shape {raw.shape}{hint}")

    n_cols = raw.shape[1]
    if columns is None:
        idx = list(range(n_cols))
    else:
        idx = []
        for c in columns:
            if not isinstance(c, int):
                raise ValueError(f"{path}: columns of an .npz array are selected by integer "
                                 f"index, got {c!r}; the array has {n_cols} columns "
                                 f"(0..{n_cols - 1})")
            if not -n_cols <= c < n_cols:
                raise ValueError(f"{path}: unknown column {c} in array {key!r}; available "
                                 f"columns: 0..{n_cols - 1} ({n_cols} columns)")
            j = c % n_cols
            if j in idx:
                raise ValueError(f"{path}: column {c} is listed more than once in columns")
            idx.append(j)
    arr = np.asarray(raw[:, idx], dtype=np.float64)
    return arr, [f"{key}[{j}]" for j in idx]


def _describe(exc: BaseException) -> str:
    """An exception as text, without numpy's advice to unpickle (``allow_pickle``): running
    a file's code is never the way to read data."""
    if "pickle" in str(exc):
        return "not a numeric .npz archive (it looks like pickled Python objects)"
    return f"{type(exc).__name__}: {exc}"


def _check_finite_columns(arr: np.ndarray, names: list[str], source: str) -> None:
    """Raise if any column holds NaN or infinite values, naming columns and row counts."""
    bad = ~np.isfinite(arr)
    if not bad.any():
        return
    per_col = bad.sum(axis=0)
    parts = [f"{names[j]!r}: {int(per_col[j])} row(s)" for j in np.flatnonzero(per_col)]
    n_rows = int(bad.any(axis=1).sum())
    raise ValueError(f"{source}: NaN or infinite values in column(s) {', '.join(parts)} "
                     f"({n_rows} of {arr.shape[0]} rows affected); remove or impute them first")


def _check_range(arr: np.ndarray, names: list[str], source: str, dtype: torch.dtype) -> None:
    """Refuse finite values that the target dtype cannot hold (they would become inf)."""
    limit = torch.finfo(dtype).max
    over = np.abs(arr) > limit
    if not over.any():
        return
    row, col = (int(i) for i in np.argwhere(over)[0])
    kind = str(dtype).removeprefix("torch.")
    raise ValueError(f"{source}: column {names[col]!r}, row {row + 1}: value {arr[row, col]:.6g} "
                     f"overflows {kind} (largest {limit:.3g}); load in float64 (the default)")


def _standardize(arr: np.ndarray, names: list[str], source: str) -> np.ndarray:
    """Centre each column and scale it to unit sample standard deviation (ddof=1)."""
    if arr.shape[0] < 2:
        raise ValueError(f"{source}: standardize=True needs at least 2 rows (ddof=1), "
                         f"got {arr.shape[0]}")
    mean = arr.mean(axis=0)
    std = arr.std(axis=0, ddof=1)
    zero = [names[j] for j in np.flatnonzero(~(std > 0))]
    if zero:
        raise ValueError(f"{source}: cannot standardize column(s) {zero}: zero variance "
                         "(all values equal)")
    return (arr - mean) / std
