"""benchmarks/generator_quality.py runs end to end on a tiny MNIST-shaped folder (its figures
live in benchmarks/RESULTS.md)."""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def _tiny_mnist(folder: Path) -> Path:
    """Ten 'digits' as bright bars at different heights, plus noise: separable classes."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for split, n in (("train", 200), ("t10k", 60)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, size=(n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 255
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def test_generator_quality_reports_every_model(tmp_path):
    mnist = _tiny_mnist(tmp_path / "mnist")
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "generator_quality.py"), "--mnist",
         str(mnist), "--epochs", "1", "--n-generated", "200", "--classifier-epochs", "20",
         "--dcgan-channels", "4,8", "--classifier", str(tmp_path / "c.pt"),
         "--json", str(out)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    # the bars are told apart: the classifier is trained and scored on them
    assert figures["classifier"]["test_accuracy"] >= 0.9
    assert (figures["n_train"], figures["n_test"]) == (200, 60)
    rows = {row["model"]: row for row in figures["rows"]}
    assert set(rows) == {"mnist-train (real images)", "gan", "dcgan", "vae", "vamp"}
    for name, row in rows.items():
        assert 0 <= row["confident_share"] <= 1 and 0 <= row["classes_covered"] <= 10, name
        assert 0 <= row["kl_from_uniform"] <= math.log(10) + 1e-12, name
        assert math.isfinite(row["frechet_distance"]) and row["frechet_distance"] >= 0, name
        assert row["n_generated"] == 200 and row["n_reference"] == 60, name
    for name in ("gan", "dcgan", "vae", "vamp"):
        assert rows[name]["epochs"] == 1 and rows[name]["train_cpu_seconds"] > 0, name
    # all 200 real training images, 20 of each class: all ten covered
    assert rows["mnist-train (real images)"]["classes_covered"] == 10
    assert "Frechet" in done.stdout
