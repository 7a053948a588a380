"""Output folders that are whole or absent.

A command writes into ``<parent>/.<name>.partial/`` beside its ``--out`` (same parent, so the
last step is a rename on one file system) and moves it into place when everything is written,
replacing the previous folder as a whole. So:

- an interrupted or failed run leaves the previous ``--out`` untouched and no half-written
  set: the partial folder is removed, or kept only when it holds a training checkpoint (its
  ``checkpoint/`` subfolder), as the place ``--resume`` continues from;
- a re-run leaves nothing of an earlier run (no stale plots);
- ``<parent>/.<name>.lock``, held with ``fcntl.flock`` for the whole run, refuses a second
  concurrent run on the same ``--out``; the kernel releases the lock when a process dies, so
  a crash never leaves a stale lock;
- ``--out`` is checked before any data is read or fitted: not a file, a writable parent, free
  disk space for the known outputs, and, when it exists, a folder that ppl-models wrote (a run
  replaces ``--out`` whole, so it refuses to replace a folder of someone else's files);
- a folder (``--out`` or the partial one) that holds a checkpoint is replaced only with
  ``--overwrite``; ``--resume`` continues from the partial folder's checkpoint, else from the
  finished run's ``--out/checkpoint``.

The move replaces ``--out`` in two renames (old folder aside to ``.<name>.old``, new one in),
so a process killed between them leaves ``--out`` absent and the old folder aside; the next run
on that ``--out`` puts it back before anything else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CHECKPOINT",
    "MARKER",
    "OutputError",
    "Staging",
    "check_out",
    "holds_checkpoint",
    "output_folder",
    "sibling",
]

#: Subfolder of an output folder with the training checkpoint.
CHECKPOINT = "checkpoint"
#: Empty file that marks a folder written by ppl-models (so a re-run may replace it whole).
MARKER = ".ppl-models-output"
#: A folder without MARKER that holds this file was written by an earlier version.
_LEGACY_MARKER = "metrics.json"


class OutputError(Exception):
    """An ``--out`` that cannot be used now; the command ends with its one line, status 2."""


@dataclass(frozen=True)
class Staging:
    """Where a run writes: ``path`` (the partial folder), moved to ``out`` at the end.

    Attributes
    ----------
    out : Path
        The final folder (absolute).
    path : Path
        The partial folder to write every output into.
    resume : bool
        Whether ``path / CHECKPOINT`` holds the checkpoint to continue from.
    """

    out: Path
    path: Path
    resume: bool

    @property
    def checkpoint_dir(self) -> Path:
        """``path / CHECKPOINT``: where the trainer writes (and resumes from)."""
        return self.path / CHECKPOINT


def sibling(out: Path, kind: str) -> Path:
    """``<parent>/.<name>.<kind>``: the partial folder, the lock file or the old folder."""
    return out.parent / f".{out.name}.{kind}"


def holds_checkpoint(folder: Path) -> bool:
    """Whether ``folder / CHECKPOINT`` holds any file."""
    where = folder / CHECKPOINT
    return where.is_dir() and any(p.is_file() for p in where.iterdir())


def check_out(out: str | os.PathLike[str], need_bytes: int) -> Path:
    """Check ``--out`` before any work and return it as an absolute path.

    The parent folder is created if missing (as a run would), and must be writable; ``--out``
    must not be a file, nor a non-empty folder without :data:`MARKER` (or an earlier version's
    ``metrics.json``); the disk must have ``need_bytes`` free.

    Raises
    ------
    OutputError
        One line naming the folder and the problem.
    """
    out = Path(os.path.abspath(os.path.expanduser(out)))
    if out.parent == out:
        raise OutputError(f"--out {out} is the root of the file system; name a folder")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"--out {out}: cannot create the folder {parent} ({exc.strerror or exc})"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out}: the folder {parent} is not writable")
    if out.is_dir() and any(out.iterdir()) and not (
        (out / MARKER).exists() or (out / _LEGACY_MARKER).exists()
    ):
        raise OutputError(
            f"--out {out} holds files that ppl-models did not write; a run replaces its "
            "--out as a whole, so choose a new or empty folder"
        )
    free = shutil.disk_usage(parent).free
    if free < need_bytes:
        raise OutputError(
            f"--out {out}: {free / 1e6:.1f} MB free on its disk, and this run writes about "
            f"{need_bytes / 1e6:.1f} MB"
        )
    return out


class _Lock:
    """An exclusive ``flock`` on a lock file, removed on release.

    After locking, the path is checked to still name the locked file: another process may
    have removed it (releasing its own lock) between our ``open`` and ``flock``, and a lock on
    a removed file excludes nobody.
    """

    def __init__(self, path: Path, out: Path):
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(
                    f"--out {out} is being written by another ppl-models run{_holder(path)}; "
                    "wait for it to end or choose another --out"
                ) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd
        self._path = path

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        os.close(self._fd)  # closing releases the flock
        self._fd = None


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C off while a few renames or removals finish; raise it afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _recover(out: Path) -> None:
    """Undo a move that a killed process left half done (see the module docstring)."""
    old = sibling(out, "old")
    if old.exists():
        if out.exists():
            _remove(old)
        else:
            os.rename(old, out)


def _prepare(out: Path, *, resume: bool, overwrite: bool, resumable: bool) -> Staging:
    partial = sibling(out, "partial")
    in_partial, in_out = holds_checkpoint(partial), holds_checkpoint(out)
    if resume:
        if in_partial:  # an interrupted run: keep its checkpoint, drop anything else
            for child in partial.iterdir():
                if child.name != CHECKPOINT:
                    _remove(child)
        elif in_out:  # a finished run: continue from a copy, --out stays as it is
            _remove(partial)
            partial.mkdir()
            shutil.copytree(out / CHECKPOINT, partial / CHECKPOINT)
        else:
            raise OutputError(
                f"--resume: no checkpoint to continue, neither in {out / CHECKPOINT} nor in "
                f"{partial / CHECKPOINT}"
            )
    else:
        if (in_partial or in_out) and not overwrite:
            where = (partial if in_partial else out) / CHECKPOINT
            then = "an interrupted" if in_partial else "an earlier"
            fix = ("pass --resume to continue it or --overwrite to start again" if resumable
                   else "pass --overwrite to replace it, or choose another --out")
            raise OutputError(f"{where} holds the checkpoint of {then} run; {fix}")
        if partial.exists() or partial.is_symlink():
            _remove(partial)
        partial.mkdir()
    (partial / MARKER).touch()
    return Staging(out=out, path=partial, resume=resume)


def _publish(partial: Path, out: Path) -> None:
    """Replace ``out`` by ``partial`` (two renames; see the module docstring)."""
    old = sibling(out, "old")
    if out.exists():
        os.rename(out, old)
    try:
        os.rename(partial, out)
    except OSError:
        if old.exists() and not out.exists():
            os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def output_folder(
    out: str | os.PathLike[str],
    *,
    need_bytes: int,
    resume: bool = False,
    overwrite: bool = False,
    resumable: bool = False,
) -> Iterator[Staging]:
    """Check ``--out``, lock it, and yield the :class:`Staging` folder to write into; move it
    into place when the block ends normally.

    Parameters
    ----------
    out : path
        The ``--out`` folder.
    need_bytes : int
        A rough size of the outputs (the free-space check).
    resume, overwrite : bool
        ``--resume`` / ``--overwrite`` (see the module docstring); not both.
    resumable : bool
        Whether the command can resume (it only changes the refusal's advice).

    Raises
    ------
    OutputError
        ``--out`` fails a check, another run holds it, a checkpoint is in the way, or there
        is nothing to resume; raised before the block runs.

    Notes
    -----
    When the block raises (an error, Ctrl-C), the partial folder is removed unless it holds a
    checkpoint, in which case it is kept for ``--resume`` and a note saying so is added to
    the exception (``exc.__notes__``).
    """
    if resume and overwrite:
        raise OutputError("--resume and --overwrite exclude each other")
    out = check_out(out, need_bytes)
    lock = _Lock(sibling(out, "lock"), out)
    try:
        _recover(out)
        staging = _prepare(out, resume=resume, overwrite=overwrite, resumable=resumable)
        try:
            yield staging
        except BaseException as exc:
            with _sigint_deferred():
                if holds_checkpoint(staging.path):
                    exc.add_note(
                        f"the checkpoint in {staging.checkpoint_dir} is kept: run again with "
                        "--resume to continue"
                    )
                else:
                    shutil.rmtree(staging.path, ignore_errors=True)
            raise
        with _sigint_deferred():
            _publish(staging.path, out)
    finally:
        lock.release()
