r"""Image data sets for the VAE family: pixels in [0, 1] as a float tensor, labels if any.

:func:`load_images` reads one source (a registry, :data:`IMAGE_SOURCES`):

================================ =========================================================
source                           what it reads
================================ =========================================================
``"digits"``                     scikit-learn's bundled 8x8 digits (1797 images, pixel / 16);
                                 splits ``train`` (first 1500), ``test`` (last 297), ``all``
``"mnist:DIR"``                  the four original idx files in DIR, gzipped or not
                                 (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte``,
                                 ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``);
                                 splits ``train`` (60000), ``test`` (10000); pixel / 255
``"fashion-mnist:DIR"``          the same file names and format (Xiao et al. 2017)
``"binarized-mnist:PATH"``       an ``.npz`` with uint8 {0, 1} arrays ``train``, ``valid``,
                                 ``test`` of 784 columns and optionally ``test_labels``: the
                                 fixed binarization of Larochelle & Murray (2011)
================================ =========================================================

Nothing is downloaded: MNIST-like files are read from the path you give.

Binarization (``binarize``): ``"threshold"`` sets pixels above 0.5 to 1 and the rest to 0;
``"dynamic"`` returns the intensities and leaves the binarization to the data loader, which
draws every pixel afresh as :math:`\mathrm{Bernoulli}(\text{intensity})` each time a batch
is drawn (Salakhutdinov & Murray 2008). That is a transform of the data side,
:class:`DynamicBinarizer` (built by :meth:`DynamicBinarizer.for_intensities`, which checks
that the pixels lie in [0, 1]), which the minibatch trainer applies to every batch its
``DataLoader`` draws; its generator state is part of a checkpoint, so a resumed fit draws the
same pixels as an uninterrupted one. ``fit_svi(..., binarize="dynamic")`` builds it.

References
----------
LeCun, Y., Bottou, L., Bengio, Y. & Haffner, P. (1998). Gradient-based learning applied to
document recognition. Proc. IEEE (MNIST and the idx format).
Larochelle, H. & Murray, I. (2011). The neural autoregressive distribution estimator. AISTATS.
Salakhutdinov, R. & Murray, I. (2008). On the quantitative analysis of deep belief networks.
ICML.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ppl_models._shared.files import first_sentence, read_bytes

__all__ = [
    "BINARIZE",
    "IMAGE_SOURCES",
    "DynamicBinarizer",
    "RandomTransform",
    "binarize_threshold",
    "check_intensities",
    "load_images",
    "read_idx",
]

#: Binarization options of :func:`load_images`.
BINARIZE = (None, "threshold", "dynamic")

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_DIGITS_TRAIN = 1500


# ---------------------------------------------------------------------------- idx files
def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an idx file (LeCun et al. 1998), gzipped or not, into an array.

    The header is two zero bytes, a type code (``0x08`` unsigned byte, ...), the number of
    dimensions ``n``, then ``n`` big-endian uint32 sizes; the data follow, and their length
    must be the product of the sizes.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the path is a directory, link loop or pipe, the header is not an idx header or the
        data are shorter or longer than it says.
    """
    path = Path(path)
    raw = read_bytes(path)
    if path.suffix == ".gz":
        try:
            raw = _gunzip_idx(path, raw)
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a readable gzip file ({exc})") from None
    dtype, shape, header = _idx_header(path, raw)
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: the idx header says shape {shape} ({expected} bytes of data) but the "
            f"file holds {len(raw) - header}: the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _idx_header(path: Path, raw: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """``(dtype, shape, header length)`` of the idx data starting ``raw``."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        magic = raw[:4].hex() if raw else "empty"
        raise ValueError(
            f"{path}: not an idx file (magic number 0x{magic}; expected 0x0000080N for unsigned "
            "bytes in N dimensions): the file is corrupt or of another format"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} bytes for {ndim} dims)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    return np.dtype(_IDX_DTYPES[raw[2]]), shape, header


#: deflate expands at most about 1032-fold: a gzip file cannot hold more data than this times
#: its size, whatever its idx header says
_GZIP_MAX_RATIO = 1100


def _gunzip_idx(path: Path, blob: bytes) -> bytes:
    """The idx bytes inside the gzip ``blob``, never more than its header declares (plus one
    byte to detect a longer file): a small file cannot expand to fill the memory."""
    with gzip.GzipFile(fileobj=io.BytesIO(blob)) as stream:
        head = stream.read(4)
        if len(head) == 4 and head[3]:
            head += stream.read(4 * head[3])
        dtype, shape, _ = _idx_header(path, head)
        expected = math.prod(shape) * dtype.itemsize
        if expected > _GZIP_MAX_RATIO * len(blob):
            raise ValueError(
                f"{path}: the idx header says shape {shape} ({expected} bytes of data), more "
                f"than a gzip file of {len(blob)} bytes can hold: the file is truncated or corrupt"
            )
        return head + stream.read(expected + 1)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        candidate = directory / name
        if candidate.exists() or candidate.is_symlink():  # read_idx says what is wrong with it
            return candidate
    raise FileNotFoundError(
        f"{directory}: neither {stem} nor {stem}.gz found (an MNIST-format folder holds "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, each optionally .gz)"
    )


def _load_idx_folder(location: str | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    directory = _required_path(location, "a folder of idx files")
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a folder")
    _check_split(split, tuple(_IDX_FILES), "MNIST-format")
    images_path, labels_path = (_find(directory, stem) for stem in _IDX_FILES[split])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{images_path}: expected unsigned-byte images of shape (N, rows, cols); got "
            f"{images.dtype} of shape {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: expected {images.shape[0]} labels for {images_path.name}; got "
            f"shape {labels.shape}"
        )
    return images.astype(np.float32) / 255.0, labels


# ---------------------------------------------------------------------------- other sources
def _load_digits(location: str | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    if location is not None:
        raise ValueError(
            f"'digits' is bundled with scikit-learn and takes no path; got {location!r}"
        )
    _check_split(split, ("train", "test", "all"), "digits")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "source 'digits' needs scikit-learn (pip install scikit-learn)"
        ) from None
    bunch = load_digits()
    images, labels = bunch.images.astype(np.float32) / 16.0, bunch.target
    rows = {"train": slice(0, _DIGITS_TRAIN), "test": slice(_DIGITS_TRAIN, None)}
    part = rows.get(split, slice(None))
    return images[part], labels[part]


def _load_binarized(location: str | None, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    path = _required_path(location, "an .npz file")
    _check_split(split, ("train", "valid", "test"), "binarized-mnist")
    images, labels = _read_binarized(path, split)
    key = f"{split}_labels"
    if images.ndim != 2 or images.shape[1] != 784:
        raise ValueError(f"{path}: array '{split}' must be (N, 784); got {images.shape}")
    if not (np.issubdtype(images.dtype, np.number) or images.dtype == np.bool_) or np.iscomplexobj(
        images
    ):
        raise ValueError(
            f"{path}: array '{split}' must hold real numbers (binarized pixels); got dtype "
            f"{images.dtype}"
        )
    if not np.isin(images, (0, 1)).all():
        raise ValueError(f"{path}: array '{split}' must hold only 0 and 1 (binarized pixels)")
    if labels is not None:
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{path}: '{key}' must hold integer class labels; got dtype {labels.dtype}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"{path}: '{key}' must hold one label per image ({images.shape[0]}); got "
                f"{labels.shape}"
            )
    return images.reshape(-1, 28, 28).astype(np.float32), labels


def _read_binarized(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Arrays ``split`` and ``{split}_labels`` (if present) of the archive at ``path``."""
    blob = read_bytes(path)
    if blob.startswith(b"\x93NUMPY"):
        raise ValueError(
            f"{path}: a single .npy array, not an .npz archive of arrays 'train', 'valid' and "
            "'test'"
        )
    if not blob.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        start = blob[:8].hex() if blob else "nothing (empty file)"
        raise ValueError(
            f"{path}: not a readable .npz archive (a zip file); it starts with {start}"
        )
    key = f"{split}_labels"
    where = "its zip directory"
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            where = f"array '{split}'"
            missing = sorted({"train", "valid", "test"} - set(archive.files))
            if missing:
                raise ValueError(
                    f"{path}: binarized MNIST needs arrays 'train', 'valid', 'test'; missing "
                    f"{missing} (found {sorted(archive.files)})"
                )
            images = archive[split]
            where = f"array '{key}'"
            labels = archive[key] if key in archive.files else None
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        if "pickle" in str(exc):  # numpy's advice would be to unpickle: never
            raise ValueError(
                f"{path}: {where} holds Python objects (dtype object), which are not loaded: "
                "store numbers"
            ) from None
        raise ValueError(f"{path}: {where} is corrupt ({first_sentence(exc)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as exc:
        raise ValueError(
            f"{path}: not a readable .npz archive: {where} is corrupt or truncated "
            f"({type(exc).__name__}: {first_sentence(exc)})"
        ) from None
    return images, labels


#: Registry of image sources: name -> reader(location or None, split) -> (images, labels).
IMAGE_SOURCES: dict[str, Callable[[str | None, str], tuple[np.ndarray, np.ndarray | None]]] = {
    "digits": _load_digits,
    "mnist": _load_idx_folder,
    "fashion-mnist": _load_idx_folder,
    "binarized-mnist": _load_binarized,
}


def _required_path(location: str | None, what: str) -> Path:
    if not location:
        raise ValueError(f"this source needs {what}: write it as 'NAME:PATH'")
    return Path(location).expanduser()


def _check_split(split: str, known: tuple[str, ...], source: str) -> None:
    if split not in known:
        raise ValueError(f"unknown split {split!r} for {source}; choose one of {list(known)}")


# ---------------------------------------------------------------------------- binarization
def binarize_threshold(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Pixels above ``threshold`` become 1, the others 0 (same dtype)."""
    return (x > threshold).to(x.dtype)


def check_intensities(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if every pixel lies in [0, 1] (an intensity), else a ``ValueError``."""
    if bool(((x < 0) | (x > 1)).any()):
        raise ValueError(
            "binarize='dynamic' draws pixels as Bernoulli(intensity): the data must lie "
            f"in [0, 1]; got [{float(x.min()):.4g}, {float(x.max()):.4g}]"
        )
    return x


@runtime_checkable
class RandomTransform(Protocol):
    """A batch transform that draws random numbers from its own generator.

    Its generator state is what :meth:`state_dict` returns, so a checkpoint can hold it and a
    resumed fit draw what an uninterrupted one would.
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class DynamicBinarizer:
    r"""Draw binary pixels :math:`b \sim \mathrm{Bernoulli}(x)` afresh at each call.

    Seeded by its own generator, so a fit is reproducible and the global RNG is untouched
    (Salakhutdinov & Murray 2008). A :class:`RandomTransform`.
    """

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    @classmethod
    def for_intensities(cls, x: torch.Tensor, seed: int = 0) -> DynamicBinarizer:
        """A binarizer for the intensities ``x``, refused unless they lie in [0, 1]."""
        check_intensities(x)
        return cls(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(x, generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (a uint8 tensor)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a state returned by :meth:`state_dict`."""
        self.generator.set_state(state["generator"])


# ---------------------------------------------------------------------------- entry point
def load_images(
    source: str,
    *,
    split: str = "train",
    binarize: str | None = None,
    flatten: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Load an image data set as pixels in [0, 1].

    Parameters
    ----------
    source : str
        ``"digits"``, ``"mnist:DIR"``, ``"fashion-mnist:DIR"`` or ``"binarized-mnist:PATH"``
        (see the module docstring).
    split : str
        ``"train"`` or ``"test"`` (``"valid"`` for binarized MNIST, ``"all"`` for digits).
    binarize : {None, "threshold", "dynamic"}
        ``None``/``"dynamic"``: intensities (``"dynamic"`` says they are to be binarized
        afresh per batch, by :func:`ppl_models.infer.fit_svi` with ``binarize="dynamic"``);
        ``"threshold"``: pixels above 0.5 set to 1, others to 0.
    flatten : bool
        ``(N, H*W)`` (what the models take) or ``(N, 1, H, W)``.
    dtype : torch.dtype
        Floating-point dtype of the pixels.

    Returns
    -------
    images : Tensor
        ``(N, H*W)`` or ``(N, 1, H, W)``, values in [0, 1].
    labels : Tensor or None
        ``(N,)`` int64 class labels, or None when the source has none (binarized MNIST's
        ``train`` and ``valid``).

    Raises
    ------
    ValueError
        Unknown source, split or binarize option; a corrupt idx file or npz archive.
    FileNotFoundError
        A missing folder or file.
    """
    if not isinstance(source, str):
        raise ValueError(f"source must be a string such as 'digits' or 'mnist:DIR'; got {source!r}")
    name, _, location = source.partition(":")
    reader = IMAGE_SOURCES.get(name)
    if reader is None:
        raise ValueError(
            f"unknown image source {name!r}; choose one of {sorted(IMAGE_SOURCES)} (with "
            "':PATH' for the ones read from files)"
        )
    if binarize not in BINARIZE:
        raise ValueError(f"binarize must be one of {list(BINARIZE)}; got {binarize!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype; got {dtype!r}")
    images, labels = reader(location or None, split)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(dtype)
    if binarize == "threshold":
        x = binarize_threshold(x)
    x = x.reshape(x.shape[0], -1) if flatten else x.reshape(x.shape[0], 1, *x.shape[1:])
    y = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return x, y
