"""Output folders are whole or absent: every command, every way a run can end.

The folder functions are checked alone first (no fitting), then through the command: a
writer that fails or is interrupted midway, a process killed while writing, two runs on one
``--out``, an ``--out`` that cannot be used, Ctrl-C. The reference in each case is the file
tree as it was before the run (names and bytes), read independently of the code under test.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ppl_models.diagnostics
from ppl_models.cli import main
from ppl_models.cli.output import (
    CHECKPOINT,
    MARKER,
    OutputError,
    output_folder,
    sibling,
)

ROOT = Path(__file__).resolve().parents[1]
GMM = ["fit", "gmm", "--quiet", "--no-plots"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(out: Path) -> list[str]:
    """Hidden siblings a run may leave beside ``out`` (partial, old or lock)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def previous_run(out: Path) -> dict[str, bytes]:
    """A folder as an earlier run left it (with a file this run will not write)."""
    out.mkdir(parents=True)
    (out / MARKER).touch()
    (out / "metrics.json").write_text('{"from": "the earlier run"}\n')
    (out / "stale.png").write_bytes(b"\x89PNG old plot")
    return snapshot(out)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ppl-models") and "Traceback" not in err
    return lines[0]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------ the folder alone
def test_the_folder_moves_into_place_whole_and_replaces_the_old_one(tmp_path):
    out = tmp_path / "run"
    previous_run(out)
    with output_folder(out, need_bytes=0) as staging:
        assert staging.path == tmp_path / ".run.partial" and not staging.resume
        (staging.path / "metrics.json").write_text("new\n")
        assert snapshot(out)["metrics.json"] == b'{"from": "the earlier run"}\n'  # not yet
    assert snapshot(out) == {MARKER: b"", "metrics.json": b"new\n"}  # stale.png is gone
    assert leftovers(out) == []


@pytest.mark.parametrize("error", [ValueError("bad"), KeyboardInterrupt(), OSError(28, "full")])
def test_a_failed_block_leaves_the_previous_folder_and_no_partial(tmp_path, error):
    out = tmp_path / "run"
    before = previous_run(out)
    with pytest.raises(type(error)), output_folder(out, need_bytes=0) as staging:
        (staging.path / "metrics.json").write_text("half")
        raise error
    assert snapshot(out) == before and leftovers(out) == []


def test_a_failed_first_run_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError), output_folder(out, need_bytes=0) as staging:
        (staging.path / "a.csv").write_text("x")
        raise RuntimeError
    assert not out.exists() and leftovers(out) == []


def test_a_partial_folder_with_a_checkpoint_is_kept_for_resume(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as info, output_folder(
        out, need_bytes=0, resumable=True
    ) as staging:
        staging.checkpoint_dir.mkdir()
        (staging.checkpoint_dir / "checkpoint.pt").write_bytes(b"epoch 3")
        (staging.path / "metrics.json").write_text("half")
        raise KeyboardInterrupt
    assert "--resume" in info.value.__notes__[0]
    assert not out.exists() and leftovers(out) == [".run.partial"]
    # a run without --resume or --overwrite is refused, the checkpoint untouched
    with pytest.raises(OutputError, match="interrupted run; pass --resume"):
        with output_folder(out, need_bytes=0, resumable=True):
            pass
    # --resume continues from it, without the half-written metrics
    with output_folder(out, need_bytes=0, resume=True, resumable=True) as staging:
        assert staging.resume
        assert snapshot(staging.path) == {MARKER: b"", "checkpoint/checkpoint.pt": b"epoch 3"}
    assert snapshot(out) == {MARKER: b"", "checkpoint/checkpoint.pt": b"epoch 3"}


def test_resume_from_a_finished_run_copies_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    previous_run(out)
    (out / CHECKPOINT).mkdir()
    (out / CHECKPOINT / "checkpoint.pt").write_bytes(b"epoch 9")
    before = snapshot(out)
    with pytest.raises(OutputError, match="earlier run; pass --resume"):
        with output_folder(out, need_bytes=0, resumable=True):
            pass
    with pytest.raises(OutputError, match="pass --overwrite to replace it"):
        with output_folder(out, need_bytes=0):  # a command that cannot resume
            pass
    with pytest.raises(ValueError), output_folder(out, need_bytes=0, resume=True) as staging:
        assert (staging.checkpoint_dir / "checkpoint.pt").read_bytes() == b"epoch 9"
        raise ValueError  # fails: --out as it was, the copy kept beside it
    assert snapshot(out) == before
    with output_folder(out, need_bytes=0, overwrite=True) as staging:
        assert not staging.checkpoint_dir.exists()
    assert snapshot(out) == {MARKER: b""}


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(OutputError, match="no checkpoint to continue"):
        with output_folder(tmp_path / "run", need_bytes=0, resume=True):
            pass
    with pytest.raises(OutputError, match="exclude each other"):
        with output_folder(tmp_path / "run", need_bytes=0, resume=True, overwrite=True):
            pass


def test_a_move_cut_between_its_two_renames_is_undone_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    before = previous_run(out)
    os.rename(out, sibling(out, "old"))  # as a process killed mid-move leaves it
    with pytest.raises(ValueError), output_folder(out, need_bytes=0):
        raise ValueError
    assert snapshot(out) == before and leftovers(out) == []


def test_the_lock_refuses_a_second_run_and_is_gone_afterwards(tmp_path):
    out = tmp_path / "run"
    with output_folder(out, need_bytes=0):
        assert sibling(out, "lock").read_text().strip() == str(os.getpid())
        with pytest.raises(OutputError, match=rf"being written by another ppl-models run "
                           rf"\(process {os.getpid()}\)"):
            with output_folder(out, need_bytes=0):
                pass
    assert leftovers(out) == []
    with output_folder(out, need_bytes=0):  # free again
        pass


def test_a_lock_left_by_a_killed_process_is_not_stale(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, time
            fd = os.open({str(sibling(out, 'lock'))!r}, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match="being written by another"):
            with output_folder(out, need_bytes=0):
                pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert sibling(out, "lock").exists()  # the dead process's file is still there
    with output_folder(out, need_bytes=0) as staging:
        (staging.path / "x").write_text("x")
    assert (out / "x").read_text() == "x"


# ------------------------------------------------------------------ through the command
def test_a_rerun_replaces_the_whole_folder(tmp_path, capsys):
    out = tmp_path / "run"
    previous_run(out)
    assert main([*GMM, "--out", str(out)]) == 0
    names = set(snapshot(out))
    assert "stale.png" not in names
    assert {"metrics.json", "summary.csv", "inference_data.nc", MARKER} <= names
    assert b"earlier run" not in (out / "metrics.json").read_bytes()
    assert leftovers(out) == [] and capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [(OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device"),
     (KeyboardInterrupt(), 130, "interrupted")],
)
@pytest.mark.parametrize("earlier", [True, False])
def test_a_run_interrupted_while_writing_leaves_the_previous_folder_or_nothing(
    tmp_path, capsys, monkeypatch, error, status, message, earlier
):
    out = tmp_path / "run"
    before = previous_run(out) if earlier else None

    def save_plots_then_fail(result, idata, folder):
        (Path(folder) / "mixture.png").write_bytes(b"\x89PNG half")  # one plot written...
        raise error  # ...then the disk fills up, or Ctrl-C

    monkeypatch.setattr(ppl_models.diagnostics, "save_plots", save_plots_then_fail)
    assert main(["fit", "gmm", "--quiet", "--out", str(out)]) == status
    assert message in one_line(capsys.readouterr().err)
    if earlier:
        assert snapshot(out) == before
    else:
        assert not out.exists()
    assert leftovers(out) == []


def test_a_process_killed_while_writing_leaves_the_previous_folder(tmp_path):
    out = tmp_path / "run"
    before = previous_run(out)
    script = textwrap.dedent(f"""
        import os, signal
        import ppl_models.diagnostics
        from ppl_models.cli import main

        def killed_midway(result, idata, folder):
            (folder / "mixture.png").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)

        ppl_models.diagnostics.save_plots = killed_midway
        main(["fit", "gmm", "--quiet", "--out", {str(out)!r}])
    """)
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert snapshot(out) == before
    assert ".run.partial" in leftovers(out)  # the dead run's half set, beside --out
    # the next run clears it and replaces the folder whole
    assert main([*GMM, "--out", str(out)]) == 0
    assert "stale.png" not in snapshot(out) and leftovers(out) == []


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("data was loaded before --out was checked")

    monkeypatch.setattr("ppl_models.data.load", no_loading)
    path = tmp_path / "results"
    path.write_text("mine")
    assert main([*GMM, "--out", str(path)]) == 2
    assert "is a file, not a folder" in one_line(capsys.readouterr().err)
    assert path.read_text() == "mine"
    below = tmp_path / "results" / "run"  # a file where a parent folder should be
    assert main([*GMM, "--out", str(below)]) == 2
    assert "cannot create the folder" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["fit", "vae", "--epochs", "1"], "MB free"),
     (["select-k", "--ks", "1-2"], "MB free"),
     (["compare-guides", "gmm", "--guides", "map"], "MB free")],
)
def test_too_little_disk_space_is_refused_before_any_work(
    tmp_path, capsys, monkeypatch, argv, message
):
    import shutil

    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr("ppl_models.cli.output.shutil.disk_usage",
                        lambda path: real._replace(free=1000))
    for name in ("ppl_models.data.load", "ppl_models.images.load_images"):
        monkeypatch.setattr(name, lambda *a, **k: pytest.fail("loaded data"))
    assert main([*argv, "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_an_unwritable_parent_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    # (the tests may run as root, for whom every folder is writable: ask os.access instead)
    parent = tmp_path / "readonly"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr("ppl_models.cli.output.os.access",
                        lambda path, mode: Path(path) != parent and real_access(path, mode))
    monkeypatch.setattr("ppl_models.data.load", lambda *a, **k: pytest.fail("loaded data"))
    assert main([*GMM, "--out", str(parent / "run")]) == 2
    assert f"the folder {parent} is not writable" in one_line(capsys.readouterr().err)
    assert list(parent.iterdir()) == []


def test_a_folder_of_other_files_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    assert main([*GMM, "--out", str(out)]) == 2
    assert "did not write" in one_line(capsys.readouterr().err)
    assert snapshot(out) == {"chapter1.tex": b"precious"}


def test_a_second_run_on_the_same_out_exits_2_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    with output_folder(out, need_bytes=0):
        assert main([*GMM, "--out", str(out)]) == 2
    assert "being written by another ppl-models run" in one_line(capsys.readouterr().err)


def test_two_concurrent_commands_one_wins_the_other_exits_2(tmp_path, capsys):
    # The first run (another process) trains for 3 s after taking the lock; the second, from
    # this process, asks for the same --out meanwhile.
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "ppl_models", "fit", "vae", "--epochs", "10000",
         "--time-limit", "3", "--batch-size", "500", "--latent-dim", "2", "--particles", "2",
         "--no-plots", "--quiet", "--out", str(out)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not sibling(out, "lock").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.02)
        second = main([*GMM, "--out", str(out)])
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert second == 2
    assert "being written by another ppl-models run" in one_line(capsys.readouterr().err)
    assert first.returncode == 0, stderr
    assert {"metrics.json", "checkpoint/checkpoint.pt"} <= set(snapshot(out))
    assert leftovers(out) == []


def test_ctrl_c_ends_with_one_line_and_status_130(tmp_path):
    out = tmp_path / "run"
    run = subprocess.Popen(
        [sys.executable, "-m", "ppl_models", "fit", "vae", "--epochs", "10000",
         "--batch-size", "50", "--latent-dim", "2", "--particles", "2", "--no-plots",
         "--quiet", "--out", str(out)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = sibling(out, "partial") / CHECKPOINT / "checkpoint.pt"
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists():
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()
            time.sleep(0.02)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 130
    line = one_line(stderr)
    assert line.startswith("ppl-models: interrupted") and "--resume" in line
    assert not out.exists() and checkpoint.exists()
