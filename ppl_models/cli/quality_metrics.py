r"""The sample-quality figures of ``fit vae`` and ``fit aae|wae|gan|dcgan|infogan``.

:func:`add_quality_options` registers ``--classifier PATH`` on a ``fit`` parser;
:func:`quality_metrics` measures the fitted model's images
(:func:`ppl_models.diagnostics.sample_quality.sample_quality`) and returns the entry
``"sample_quality"`` of ``metrics.json``:

=================== ======================================================================
key                 value
=================== ======================================================================
confident_share     share of generated images whose most probable class has probability
                    at least ``threshold`` (0.9)
classes_covered     classes that are the most probable one of at least ``min_share`` (1%)
                    of the generated images, 0 to 10
kl_from_uniform     KL of that class histogram (``class_shares``) from uniform, nats
frechet_distance    squared Fréchet distance between the classifier's penultimate features
                    of the generated images and of the test split
n_generated         max(1000, number of test images), drawn under ``--seed``
classifier          where the classifier was read or written, whether this run trained
                    it, its epochs and its accuracy on the test split
=================== ======================================================================

The classifier is trained on the grey-level images and labels of the run's own ``train``
split (never binarized, whatever the likelihood, so that every family is measured against
the same images), with seed 0 whatever ``--seed`` is, for :func:`classifier_epochs` epochs
(20 for the 1500 bundled digits, about 1.5 s of CPU; 2 for MNIST's 60000 images). It is
saved as ``classifier.pt`` in the output folder, or at ``--classifier PATH``; a file found
there is read instead of training (it must have been trained on images of the same size).
Within one process, a classifier trained on the same images is trained once (tests and
notebooks fit many models on one data set). A source without training labels
(``binarized-mnist``, without ``--classifier``) gets ``null``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the command line imports torch only when a subcommand runs
    import torch

__all__ = [
    "CLASSIFIER_FILE", "add_quality_options", "classifier_epochs", "classifier_path",
    "quality_metrics",
]

#: The classifier's file name in the output folder when ``--classifier`` is not given.
CLASSIFIER_FILE = "classifier.pt"

#: Seed of the classifier's training: one classifier per data set, whatever ``--seed`` is.
CLASSIFIER_SEED = 0

#: Generated images measured: at least this many, and as many as the test split holds.
MIN_GENERATED = 1000

#: Trained classifiers of this process, by a hash of their training images and settings.
_TRAINED: dict[str, Any] = {}


def classifier_epochs(n_train: int) -> int:
    """Epochs of the classifier: about 100000 image passes, at least 2 and at most 20."""
    return min(20, max(2, math.ceil(100_000 / n_train)))


def classifier_path(text: str) -> Path:
    """``--classifier``'s type: the path; a file already there must be a saved digit
    classifier (checked before any fitting, so a bad file costs no training)."""
    from ppl_models.diagnostics.digit_classifier import load_digit_classifier

    path = Path(text).expanduser()
    if path.exists():
        try:
            load_digit_classifier(path)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return path


def add_quality_options(parser: argparse.ArgumentParser) -> None:
    """Register ``--classifier PATH`` on a ``fit`` parser."""
    parser.add_argument(
        "--classifier", metavar="PATH", type=classifier_path, default=None,
        help="digit classifier of the sample-quality measures: read from PATH if it exists, "
        "else trained on the training split and saved there (default: trained and saved "
        f"as {CLASSIFIER_FILE} in the output folder)",
    )


def _fingerprint(images: torch.Tensor, labels: torch.Tensor, epochs: int) -> str:
    digest = hashlib.sha256()
    digest.update(images.contiguous().numpy().tobytes())
    digest.update(labels.contiguous().numpy().tobytes())
    digest.update(f"{tuple(images.shape)} {epochs} {CLASSIFIER_SEED}".encode())
    return digest.hexdigest()


def _classifier(source: str, path: Path) -> tuple[Any, bool, int | None]:
    """The classifier at ``path`` (read), or one trained on ``source``'s train split and
    saved there; whether it was trained here, and its epochs."""
    from ppl_models.diagnostics.digit_classifier import (
        load_digit_classifier,
        save_digit_classifier,
        train_digit_classifier,
    )
    from ppl_models.images import load_images

    if path.exists():
        classifier, info = load_digit_classifier(path)
        epochs = info.get("epochs")
        return classifier, False, epochs if isinstance(epochs, int) else None
    x_train, y_train = load_images(source, split="train")
    if y_train is None:
        return None, False, None
    epochs = classifier_epochs(len(x_train))
    key = _fingerprint(x_train, y_train, epochs)
    if key not in _TRAINED:
        _TRAINED[key] = train_digit_classifier(x_train, y_train, epochs=epochs,
                                               seed=CLASSIFIER_SEED)
    save_digit_classifier(_TRAINED[key], path, info={"epochs": epochs, "data": source,
                                                      "seed": CLASSIFIER_SEED})
    return _TRAINED[key], True, epochs


def quality_metrics(model: Any, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """``{"sample_quality": ...}`` for ``metrics.json``: the measures of ``model``'s images
    (see the module docstring), or ``None`` when the data have no training labels.

    ``args`` holds ``data``, ``seed``, ``quiet`` and ``classifier`` (the ``fit`` options);
    ``folder`` is the run's (staging) output folder. Raises ``ValueError`` (one line) when
    ``--classifier`` names a file that is not a classifier, or one for images of another size.
    """
    from ppl_models.diagnostics.digit_classifier import classifier_accuracy
    from ppl_models.diagnostics.sample_quality import generated_images, sample_quality
    from ppl_models.images import load_images

    path = args.classifier or folder / CLASSIFIER_FILE
    classifier, trained, epochs = _classifier(args.data, path)
    if classifier is None:
        if not args.quiet:
            print(f"ppl-models: no sample-quality measures: --data {args.data} has no training "
                  "labels to train the digit classifier on (give --classifier PATH)",
                  file=sys.stderr)
        return {"sample_quality": None}
    x_test, y_test = load_images(args.data, split="test")
    if x_test.shape[1] != classifier.side ** 2:
        raise ValueError(f"--classifier {path} was trained on {classifier.side}x"
                         f"{classifier.side} images; --data {args.data} has {x_test.shape[1]} "
                         "pixels per image")
    images = generated_images(model, max(MIN_GENERATED, len(x_test)), seed=args.seed)
    figures = sample_quality(classifier, images, x_test).to_dict()
    inside = path.resolve().is_relative_to(folder.resolve())
    figures["classifier"] = {
        "path": os.path.relpath(path, folder) if inside else str(path),
        "trained_by_this_run": trained,
        "epochs": epochs,
        "test_accuracy": None if y_test is None else classifier_accuracy(classifier, x_test,
                                                                         y_test),
    }
    return {"sample_quality": figures}
