r"""Sample quality of the collection's generators on MNIST, on one scale: GAN, DCGAN, the
standard VAE and the VampPrior VAE, judged by a digit classifier the project trains itself.

Protocol (``ppl_models.diagnostics.sample_quality``):

1. A :class:`~ppl_models.diagnostics.digit_classifier.DigitClassifier` is trained on the 60000
   MNIST training images (grey levels in [0, 1]) for ``--classifier-epochs`` epochs, seed 0,
   and its accuracy on the 10000 test images is reported (or it is read from
   ``--classifier PATH`` when that file exists; it is written there otherwise).
2. Each generator of ``--models`` is trained on the training images for at most ``--epochs``
   epochs and at most ``--time-budget`` seconds of wall-clock training (whichever comes
   first; the epochs reached and the CPU seconds are reported), or read from a saved fit
   (``--fitted NAME=DIR``, a :meth:`~ppl_models.infer.FitResult.save` folder such as the
   ``fit/`` of ``ppl-models fit gan|dcgan``):

   * ``gan``: :class:`~ppl_models.models.GAN`, noise 64, one hidden layer of 256 in both
     networks, by ``fit_adversarial``;
   * ``dcgan``: :class:`~ppl_models.models.DCGAN`, noise 100, channels ``--dcgan-channels``
     (default 64, 128), by ``fit_adversarial``;
   * ``vae``: :class:`~ppl_models.models.VAE`, 20-d code, one hidden layer of 300, Bernoulli
     pixels, by ``fit_svi``;
   * ``vamp``: the same with a VampPrior of 500 pseudo-inputs (Tomczak & Welling 2018).

   The GANs learn grey levels with Adam (lr 2e-4, betas 0.5, 0.999; Radford et al. 2016),
   batch 64, non-saturating loss; the VAEs learn thresholded pixels (as ``fit vae`` does) by
   Adam (lr 1e-3), batch 100, and are measured on their decoder means at prior draws.
3. ``--n-generated`` images of each generator (seed ``--seed``) are measured against the
   10000 test images: share confidently classified (max probability >= 0.9), classes covered
   (classes that are the most probable one of at least 1% of the images), KL of that class
   histogram from uniform (nats), and the squared Fréchet distance between the classifier's
   64 penultimate features of generated and test images. A reference row measures
   ``--n-generated`` real *training* images the same way: the floor a perfect generator would
   reach (its Fréchet distance is not 0: two finite samples).

Expected from the literature: GAN and DCGAN cover 10 of 10 classes when they do not collapse,
DCGAN with sharper (more confidently classified) digits than the VAEs' blurred means.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/generator_quality.py \
        --mnist /work/shared/data/mnist --time-budget 600 --json figures.json

``--mnist`` defaults to the environment variable ``PPL_MODELS_MNIST``.

References
----------
Goodfellow, I. et al. (2014). Generative adversarial nets. NeurIPS.
Radford, A., Metz, L. & Chintala, S. (2016). Unsupervised representation learning with deep
convolutional generative adversarial networks. ICLR.
Kingma, D. P. & Welling, M. (2014). Auto-encoding variational Bayes. ICLR.
Tomczak, J. M. & Welling, M. (2018). VAE with a VampPrior. AISTATS.
Heusel, M. et al. (2017). GANs trained by a two time-scale update rule converge to a local
Nash equilibrium. NeurIPS.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ppl_models._shared.jsonsafe import to_json
from ppl_models.diagnostics.digit_classifier import (
    classifier_accuracy,
    load_digit_classifier,
    save_digit_classifier,
    train_digit_classifier,
)
from ppl_models.diagnostics.sample_quality import generated_images, sample_quality
from ppl_models.images import binarize_threshold, load_images
from ppl_models.infer import FitResult, fit_adversarial, fit_svi
from ppl_models.models import DCGAN, GAN, VAE, VampPrior


def _gan(args: argparse.Namespace, n_features: int) -> GAN:
    return GAN(n_features, 64, hidden=(256,), d_hidden=(256,), output="unit")


def _dcgan(args: argparse.Namespace, n_features: int) -> DCGAN:
    return DCGAN(100, channels=args.dcgan_channels)


def _vae(args: argparse.Namespace, n_features: int) -> VAE:
    return VAE(n_features, 20, hidden=(300,))


def _vamp(args: argparse.Namespace, n_features: int) -> VAE:
    return VAE(n_features, 20, hidden=(300,), prior=VampPrior(500))


#: name -> (builder(args, n_features), adversarial?)
MODELS: dict[str, tuple[Callable[[argparse.Namespace, int], Any], bool]] = {
    "gan": (_gan, True),
    "dcgan": (_dcgan, True),
    "vae": (_vae, False),
    "vamp": (_vamp, False),
}


def _names(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    return names


def _fitted(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR; got {text!r}")
    return name, Path(path)


def _channels(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected two positive widths like 64,128; got {text!r}")
    return int(parts[0]), int(parts[1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default=os.environ.get("PPL_MODELS_MNIST"),
                        help="folder of the MNIST idx files (default $PPL_MODELS_MNIST)")
    parser.add_argument("--models", type=_names, default=list(MODELS),
                        help="comma-separated generators to train (default all: "
                        + ",".join(MODELS) + "); empty string for none")
    parser.add_argument("--fitted", type=_fitted, action="append", default=[],
                        metavar="NAME=DIR", help="also measure a saved fit (FitResult folder)")
    parser.add_argument("--epochs", type=int, default=50, help="most epochs per generator")
    parser.add_argument("--time-budget", type=float, default=600.0,
                        help="most seconds of training per generator (default 600)")
    parser.add_argument("--dcgan-channels", type=_channels, default=(64, 128))
    parser.add_argument("--classifier", type=Path, help="read the classifier here, or write it")
    parser.add_argument("--classifier-epochs", type=int, default=3)
    parser.add_argument("--n-generated", type=int, default=10000)
    parser.add_argument("--train-size", type=int, help="use the first N training images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if not args.mnist:
        parser.error("give --mnist DIR or set PPL_MODELS_MNIST")
    return args


def _classifier(args: argparse.Namespace, x_train, y_train, x_test, y_test) -> dict[str, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    if args.classifier is not None and args.classifier.exists():
        classifier, info = load_digit_classifier(args.classifier)
        trained = False
    else:
        classifier = train_digit_classifier(x_train, y_train, epochs=args.classifier_epochs,
                                            seed=0)
        info = {"epochs": args.classifier_epochs}
        trained = True
        if args.classifier is not None:
            save_digit_classifier(classifier, args.classifier, info=info)
    return {"classifier": classifier, "trained": trained, "epochs": info.get("epochs"),
            "test_accuracy": classifier_accuracy(classifier, x_test, y_test),
            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}


def _train(name: str, args: argparse.Namespace, x_train: torch.Tensor) -> tuple[Any, dict]:
    build, adversarial = MODELS[name]
    torch.manual_seed(args.seed)
    model = build(args, x_train.shape[1])
    start, cpu = time.perf_counter(), time.process_time()
    if adversarial:
        result = fit_adversarial(model, x_train, batch_size=64, num_epochs=args.epochs,
                                 lr=2e-4, betas=(0.5, 0.999), time_limit=args.time_budget,
                                 seed=args.seed, progress=False)
    else:
        result = fit_svi(model, binarize_threshold(x_train), batch_size=100,
                         num_epochs=args.epochs, time_limit=args.time_budget, seed=args.seed,
                         progress=False)
    return model.eval(), {
        "epochs": int(result.info.get("num_epochs", result.n_iter)),
        "train_seconds": time.perf_counter() - start,
        "train_cpu_seconds": time.process_time() - cpu,
        "stopped_by": result.info.get("stopped_by"),
    }


def _row(name: str, quality, extra: dict[str, Any]) -> dict[str, Any]:
    figures = quality.to_dict()
    return {"model": name, **extra, **figures}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    source = f"mnist:{args.mnist}"
    x_train, y_train = load_images(source, split="train")
    x_test, y_test = load_images(source, split="test")
    if args.train_size:
        x_train, y_train = x_train[:args.train_size], y_train[:args.train_size]
    trained = {}
    for name in args.models:  # first the generators: the classifier may be written meanwhile
        trained[name] = _train(name, args, x_train)
        info = trained[name][1]
        print(f"{name}: {info['epochs']} epochs ({info['train_cpu_seconds']:.0f} CPU s, "
              f"{info['train_seconds']:.0f} s)", flush=True)
    judge = _classifier(args, x_train, y_train, x_test, y_test)
    classifier = judge.pop("classifier")
    print(f"classifier: test accuracy {judge['test_accuracy']:.4f} "
          f"({'trained' if judge['trained'] else 'read'}, {judge['epochs']} epochs, "
          f"{judge['cpu_seconds']:.0f} CPU s)", flush=True)
    n = min(args.n_generated, len(x_train))
    reference = sample_quality(classifier, x_train[torch.randperm(
        len(x_train), generator=torch.Generator().manual_seed(args.seed))[:n]], x_test)
    rows = [_row("mnist-train (real images)", reference, {})]
    for name, (model, info) in trained.items():
        quality = sample_quality(classifier, generated_images(model, args.n_generated,
                                                              seed=args.seed), x_test)
        rows.append(_row(name, quality, info))
    for name, path in args.fitted:
        model = FitResult.load(path).model.eval()
        quality = sample_quality(classifier, generated_images(model, args.n_generated,
                                                              seed=args.seed), x_test)
        rows.append(_row(name, quality, {"fitted": str(path)}))
    header = (f"{'model':<26} {'epochs':>6} {'CPU s':>7} {'confident':>9} {'classes':>7} "
              f"{'KL unif':>8} {'Frechet':>9}")
    print(header)
    for row in rows:
        epochs = row.get("epochs", "")
        cpu = f"{row['train_cpu_seconds']:.0f}" if "train_cpu_seconds" in row else ""
        print(f"{row['model']:<26} {epochs!s:>6} {cpu:>7} {row['confident_share']:>9.3f} "
              f"{row['classes_covered']:>7d} {row['kl_from_uniform']:>8.3f} "
              f"{row['frechet_distance']:>9.2f}")
    figures = {"classifier": judge, "n_train": len(x_train), "n_test": len(x_test),
               "settings": {k: (str(v) if isinstance(v, Path) else v)
                            for k, v in vars(args).items() if k not in ("fitted", "json")},
               "rows": rows}
    if args.json:
        args.json.write_text(to_json(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
