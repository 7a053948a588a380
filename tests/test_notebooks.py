"""Every notebook runs top to bottom in a small smoke setting, shows its figures as images,
and is stored without outputs."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

#: A code cell that draws: calls a ``plot...`` function or method, pyplot, or displays an image.
PLOT_CELL = re.compile(r"\bplot\w*\(|\bplt\.|display\(Image\(")


def figure_problems(notebook) -> list[str]:
    """Cells of an executed notebook that print a figure's repr instead of showing it, or that
    draw and show no PNG."""
    problems = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        data = [out.get("data", {}) for out in cell.outputs]
        for bundle in data:
            text = bundle.get("text/plain", "")
            if "<Figure size" in text and "image/png" not in bundle:
                problems.append(f"cell {index} prints {text.splitlines()[0]!r} without an image")
        if PLOT_CELL.search(cell.source) and not any("image/png" in b for b in data):
            problems.append(f"cell {index} draws but shows no PNG: {cell.source[:60]!r}")
    return problems


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name} holds outputs: clear them before committing"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path: Path, monkeypatch):
    monkeypatch.setenv("PPL_MODELS_SMOKE", "1")
    # the kernel picks Jupyter's default (inline) backend, as in a user's session
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    errors = [
        out for cell in notebook.cells if cell.cell_type == "code"
        for out in cell.outputs if out.output_type == "error"
    ]
    assert not errors
    problems = figure_problems(notebook)
    assert not problems, f"{path.name}: " + "; ".join(problems)
