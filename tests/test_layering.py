"""Imports go one way: ``data -> models -> guides -> infer -> diagnostics -> workflows -> cli``.

An AST walk over every module of :mod:`ppl_models` and :mod:`guides` (module-level and
function-level imports, absolute and relative) checks each import against the layer map
below: a module may import from its own layer or a lower one, never from a higher one, and
:mod:`guides` imports nothing from :mod:`ppl_models`. Only the console entry point
(``ppl_models.__main__`` and the ``ppl-models`` script) imports :mod:`ppl_models.cli`.

The map (longest matching prefix wins):

===== =============================================== =========================================
layer modules                                         why there
===== =============================================== =========================================
0     ``ppl_models._shared``, ``ppl_models._arviz``   small helpers every layer may use
1     ``ppl_models.data``, ``ppl_models.images``      loading data sets (no model knowledge)
2     ``ppl_models.models``, ``ppl_models.priors``,   model classes with their prior
      ``ppl_models.nn``                               specifications and networks
3     ``guides``                                      reads models by duck typing only
4     ``ppl_models.infer``                            drivers and ``FitResult``
5     ``ppl_models.diagnostics``                      reads a ``FitResult``, never fits
6     ``ppl_models.workflows``, ``ppl_models``        fit several times; the package's public
      (the package ``__init__``),                     names re-export layers 1 to 6, and so
      ``ppl_models.sklearn``                          does the scikit-learn facade
7     ``ppl_models.cli``, ``ppl_models.__main__``     the command line and its entry point
===== =============================================== =========================================
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ppl_models", "guides")

#: Module prefix -> layer (see the module docstring).
LAYERS: dict[str, int] = {
    "ppl_models._shared": 0,
    "ppl_models._arviz": 0,
    "ppl_models.data": 1,
    "ppl_models.images": 1,
    "ppl_models.models": 2,
    "ppl_models.priors": 2,
    "ppl_models.nn": 2,
    "guides": 3,
    "ppl_models.infer": 4,
    "ppl_models.diagnostics": 5,
    "ppl_models.workflows": 6,
    "ppl_models": 6,
    "ppl_models.sklearn": 6,
    "ppl_models.cli": 7,
    "ppl_models.__main__": 7,
}
NAMES = ("data", "models", "guides", "infer", "diagnostics", "workflows", "cli")


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name: itself or its longest package prefix in
    :data:`LAYERS` (the bare ``ppl_models`` is only the package ``__init__``, so a new
    top-level module must be placed in the map)."""
    if module in LAYERS:
        return LAYERS[module]
    parts = module.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS and prefix != "ppl_models":
            return LAYERS[prefix]
    return None


def module_name(path: Path, root: Path = ROOT) -> str:
    """``ppl_models/infer/svi.py`` -> ``ppl_models.infer.svi``; a package's ``__init__`` is
    the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str, root: Path) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every module ``path`` imports, anywhere in the file, as ``(line, dotted name)``.

    ``from P import x`` counts as importing ``P.x`` when ``x`` is a module of the tree, and
    ``P`` otherwise; relative imports are resolved against the file's package.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    own = module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - (node.level - 1)]
                if node.module:
                    base_parts.append(node.module)
                base = ".".join(base_parts)
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub, root) else base))
    return found


def violations(root: Path = ROOT) -> list[str]:
    """Every import against the layer map under ``root``, one line each."""
    bad: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            own = module_name(path, root)
            own_layer = layer_of(own)
            if own_layer is None:
                bad.append(f"{own}: not in the layer map")
                continue
            for line, target in imported_modules(path, root):
                if own.split(".")[0] == "guides" and target.split(".")[0] == "ppl_models":
                    bad.append(f"{own}:{line} imports {target}: guides never imports ppl_models")
                    continue
                target_layer = layer_of(target)
                if target_layer is not None and target_layer > own_layer:
                    bad.append(
                        f"{own}:{line} imports {target} (layer {target_layer}) from layer "
                        f"{own_layer}: imports go only to the same or a lower layer"
                    )
    return bad


def test_every_import_follows_the_layers():
    assert violations() == []


def test_the_map_covers_every_layer_named_in_the_design():
    for name in NAMES:
        module = name if name == "guides" else f"ppl_models.{name}"
        assert layer_of(module) is not None, name
    ordered = [layer_of(n if n == "guides" else f"ppl_models.{n}") for n in NAMES]
    assert ordered == sorted(ordered) and len(set(ordered)) == len(NAMES)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


_BASE = {
    "ppl_models/models/__init__.py": "",
    "ppl_models/models/gmm.py": "",
    "ppl_models/infer/__init__.py": "",
    "ppl_models/infer/svi.py": "",
    "ppl_models/cli/__init__.py": "",
    "ppl_models/_shared/__init__.py": "",
    "ppl_models/_shared/checks.py": "",
}


@pytest.mark.parametrize(
    ("path", "source", "culprit"),
    [
        # module level, absolute
        ("ppl_models/models/gmm.py", "from ppl_models.infer import svi\n", "ppl_models.infer"),
        # inside a function
        ("ppl_models/models/gmm.py", "def f():\n    import ppl_models.cli\n", "ppl_models.cli"),
        # relative, two levels up then down
        ("ppl_models/models/gmm.py", "from ..infer import svi\n", "ppl_models.infer.svi"),
        # the package facade from below
        ("ppl_models/infer/svi.py", "from ppl_models import fit_em\n", "ppl_models (layer 6)"),
        # guides must not import ppl_models at all, not even the bottom layer
        ("guides/families.py", "from ppl_models._shared import checks\n", "guides never"),
        # the bottom layer stays at the bottom
        ("ppl_models/_shared/checks.py", "import ppl_models.data\n", "ppl_models.data"),
    ],
)
def test_an_upward_import_is_found(tmp_path, path, source, culprit):
    root = _tree(tmp_path, {**_BASE, path: source})
    found = violations(root)
    assert len(found) == 1 and culprit in found[0], found


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("ppl_models/infer/svi.py", "from ppl_models.models import gmm\nimport guides\n"),
        ("ppl_models/infer/svi.py", "from . import em\nfrom .._shared import checks\n"),
        ("ppl_models/cli/__init__.py", "def main():\n    from ppl_models.infer import svi\n"),
        ("guides/families.py", "import torch\nfrom guides import structure\n"),
    ],
)
def test_downward_and_sideways_imports_pass(tmp_path, path, source):
    assert violations(_tree(tmp_path, {**_BASE, path: source})) == []
