"""Image loaders: bundled digits, idx files (parsed against files written here), npz archives.

The references are independent: scikit-learn's own arrays, bytes we write by hand in the idx
format of LeCun et al. (1998), and published properties of the real files (MNIST's pixel mean
0.1307; the binarized set's sizes and pixel means) when they are on this machine.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_models.images import DynamicBinarizer, RandomTransform, load_images, read_idx

MNIST_DIR = Path("/work/shared/data/mnist")
BINARIZED = Path("/work/shared/data/binarized_mnist/binarized_mnist.npz")


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist_folder(folder: Path, n_train: int = 5, n_test: int = 3, gz: bool = True):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images),
                            (f"{prefix}-labels-idx1-ubyte", labels)):
            raw = _idx_bytes(array)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
        arrays[split] = (images, labels)
    return arrays


def test_digits_are_sklearns_images_scaled_to_the_unit_interval():
    from sklearn.datasets import load_digits

    reference = load_digits()
    x, y = load_images("digits", split="all")
    assert x.shape == (1797, 64) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(reference.data / 16.0).float())
    assert torch.equal(y, torch.from_numpy(reference.target))
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    train, _ = load_images("digits")
    test, test_labels = load_images("digits", split="test")
    assert train.shape[0] + test.shape[0] == 1797 and train.shape[0] == 1500
    assert torch.equal(torch.cat([train, test]), x)
    assert test_labels.shape == (297,)
    images, _ = load_images("digits", flatten=False, dtype=torch.float64)
    assert images.shape == (1500, 1, 8, 8) and images.dtype == torch.float64


def test_threshold_binarization():
    x, _ = load_images("digits", split="all")
    b, _ = load_images("digits", split="all", binarize="threshold")
    assert set(b.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(b, (x > 0.5).float())


def test_dynamic_binarizer_draws_bernoulli_pixels_afresh_and_reproducibly():
    p = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0]).repeat(4000, 1)
    first, second = DynamicBinarizer(3)(p), DynamicBinarizer(3)(p)
    assert torch.equal(first, second)  # seeded
    again = DynamicBinarizer(3)
    a, b = again(p), again(p)
    assert not torch.equal(a, b)  # a fresh draw at each call
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    # Bernoulli means: standard error <= 0.5 / sqrt(4000) ~ 0.008
    assert torch.allclose(a.mean(0), p[0], atol=0.035)
    intensities, _ = load_images("digits", binarize="dynamic")
    plain, _ = load_images("digits")
    assert torch.equal(intensities, plain)  # binarized later, in the data loader


def test_dynamic_binarizer_state_continues_the_same_draws():
    # A checkpoint keeps the generator state: a binarizer restored from it draws what the
    # original draws next, and not what a fresh one with the same seed draws.
    p = torch.full((200, 30), 0.5)
    original = DynamicBinarizer(5)
    assert isinstance(original, RandomTransform)
    original(p)
    saved = original.state_dict()
    expected = original(p)
    restored = DynamicBinarizer(99)
    restored.load_state_dict(saved)
    assert torch.equal(restored(p), expected)
    assert not torch.equal(DynamicBinarizer(5)(p), expected)


def test_dynamic_binarizer_refuses_values_outside_the_unit_interval():
    x = torch.tensor([[0.0, 0.5, 1.0]])
    assert isinstance(DynamicBinarizer.for_intensities(x, 1), DynamicBinarizer)
    for bad in (x * 2, x - 0.25):
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\]; got \["):
            DynamicBinarizer.for_intensities(bad)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_parse_to_what_was_written(tmp_path, gz):
    arrays = _write_mnist_folder(tmp_path, gz=gz)
    for split, (images, labels) in arrays.items():
        x, y = load_images(f"mnist:{tmp_path}", split=split)
        assert x.shape == (images.shape[0], 784)
        assert torch.allclose(x, torch.from_numpy(images.reshape(-1, 784) / 255.0).float())
        assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    x, _ = load_images(f"fashion-mnist:{tmp_path}", split="test", flatten=False)
    assert x.shape == (3, 1, 28, 28)


def test_read_idx_header_gives_the_shape(tmp_path):
    # A 3-D unsigned-byte file: magic 0x00000803, then sizes 2, 3, 4 (big-endian).
    raw = bytes.fromhex("00000803" "00000002" "00000003" "00000004") + bytes(range(24))
    path = tmp_path / "a-idx3-ubyte"
    path.write_bytes(raw)
    array = read_idx(path)
    assert array.shape == (2, 3, 4) and array.dtype == np.uint8
    assert array[1, 2, 3] == 23


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda raw: b"\x12\x34" + raw[2:], "not an idx file"),
        (lambda raw: raw[:-10], "truncated or corrupt"),
        (lambda raw: raw + b"\x00", "truncated or corrupt"),
        (lambda raw: raw[:6], "truncated idx header"),
    ],
)
def test_corrupt_idx_files_are_refused(tmp_path, corrupt, message):
    _write_mnist_folder(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(ValueError, match=message):
        load_images(f"mnist:{tmp_path}")


def test_broken_gzip_and_mismatched_labels_are_refused(tmp_path):
    _write_mnist_folder(tmp_path, gz=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a readable gzip file"):
        load_images(f"mnist:{tmp_path}", split="test")
    labels = np.zeros(4, dtype=np.uint8)  # 4 labels for 5 images
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    with pytest.raises(ValueError, match="expected 5 labels"):
        load_images(f"mnist:{tmp_path}")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_images(f"mnist:{tmp_path}", split="test")


def _write_npz(path: Path, **arrays):
    np.savez(path, **arrays)
    return path


def test_binarized_npz_is_read_and_validated(tmp_path):
    rng = np.random.default_rng(1)
    parts = {k: rng.integers(0, 2, size=(n, 784), dtype=np.uint8)
             for k, n in (("train", 6), ("valid", 4), ("test", 5))}
    path = _write_npz(tmp_path / "b.npz", **parts, test_labels=np.arange(5, dtype=np.uint8))
    for split, array in parts.items():
        x, y = load_images(f"binarized-mnist:{path}", split=split)
        assert torch.equal(x, torch.from_numpy(array).float())
        assert (y is None) == (split != "test")
    assert torch.equal(load_images(f"binarized-mnist:{path}", split="test")[1], torch.arange(5))
    missing = _write_npz(tmp_path / "m.npz", train=parts["train"], test=parts["test"])
    with pytest.raises(ValueError, match=r"missing \['valid'\]"):
        load_images(f"binarized-mnist:{missing}")
    grey = _write_npz(tmp_path / "g.npz", **{**parts, "train": parts["train"] * 3})
    with pytest.raises(ValueError, match="only 0 and 1"):
        load_images(f"binarized-mnist:{grey}")
    narrow = _write_npz(tmp_path / "n.npz", **{**parts, "valid": parts["valid"][:, :100]})
    with pytest.raises(ValueError, match=r"must be \(N, 784\)"):
        load_images(f"binarized-mnist:{narrow}", split="valid")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        load_images(f"binarized-mnist:{tmp_path / 'junk.npz'}")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"source": "cifar"}, ValueError, "unknown image source 'cifar'"),
        ({"source": "mnist"}, ValueError, "needs a folder"),
        ({"source": "mnist:/nonexistent/folder"}, FileNotFoundError, "not a folder"),
        ({"source": "digits", "split": "valid"}, ValueError, "unknown split 'valid'"),
        ({"source": "digits:/tmp"}, ValueError, "takes no path"),
        ({"source": "digits", "binarize": "otsu"}, ValueError, "binarize must be one of"),
        ({"source": "digits", "dtype": torch.int64}, ValueError, "floating-point"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        load_images(**kwargs)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="MNIST idx files not on this machine")
def test_real_mnist_files():
    x, y = load_images(f"mnist:{MNIST_DIR}", split="test")
    assert x.shape == (10000, 784) and y.shape == (10000,)
    assert torch.equal(torch.bincount(y), torch.tensor(  # LeCun's published class counts
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]))
    assert abs(float(x.mean()) - 0.1325) < 1e-3  # test-set pixel mean (0.1307 on train)


@pytest.mark.skipif(not BINARIZED.is_file(), reason="binarized MNIST not on this machine")
def test_real_binarized_mnist():
    x, y = load_images(f"binarized-mnist:{BINARIZED}", split="valid")
    assert x.shape == (10000, 784) and y is None
    assert abs(float(x.mean()) - 0.1311) < 5e-4  # documented pixel mean of 'valid'
    _, labels = load_images(f"binarized-mnist:{BINARIZED}", split="test")
    assert torch.equal(labels, labels.sort().values)  # test set sorted by class
