r"""The adversarial family on full MNIST, beside the published figures (issue 12).

Runs (``--run``), each trained by :func:`ppl_models.infer.fit_adversarial` on the 60000
training images (intensities in [0, 1]) and scored on the 10000 test images:

``infogan``
    :class:`~ppl_models.models.InfoGAN` (10-way categorical code, 2 continuous codes, 62-d
    noise). Figure: the share of test images whose inferred category
    :math:`\arg\max_c Q(c \mid x)` agrees with the digit label after the best one-to-one
    matching of categories to digits (Hungarian method,
    :func:`scipy.optimize.linear_sum_assignment` through
    :func:`ppl_models.diagnostics.cluster_accuracy`). Chen et al. (2016), section 7.1: about
    95% (5% error).
``infogan-conv``
    The same figure for the InfoGAN of Chen et al. (2016, appendix C.1): convolutional
    :math:`G` and :math:`D` with batch normalisation, :math:`Q` a head (FC 128) on the
    discriminator's body, weight 0.1 on the continuous codes' term, Adam with learning rate
    1e-3 for :math:`G` and :math:`Q` and 2e-4 for :math:`D` (β = 0.5, 0.999), batch 100.
    The figure uses the networks in evaluation mode (batch norm with its running statistics);
    also reported: the same with batch statistics of the test images (batches of 2000), the
    categories used, and per epoch the losses and the categories taken by 2000 training
    images (no labels read during training).
``infogan-mlp-shared``
    ``infogan-paper-lr`` (MLP 256-256, the paper's learning rates) with :math:`Q` a head
    (FC 128) on the discriminator's body instead of its own 256-256 trunk (the earlier
    ``infogan`` runs keep their own trunk: ``share_discriminator=False``).
``aae16``, ``aae30``
    :class:`~ppl_models.models.ClusteringAdversarialAutoencoder` with 16 / 30 clusters
    (Makhzani et al. 2016, section 6). Figure: test error when each cluster is labelled with
    the majority digit of the training images assigned to it (:math:`\arg\max_k y_k`);
    Makhzani et al. Table 3: 9.55% (16) and 4.10% (30).
``aae-mog``
    :class:`~ppl_models.models.AdversarialAutoencoder` with a 2-d code and the 10-component
    mixture prior of ``ppl-models fit aae --prior mog`` (10 Gaussians of standard deviation
    0.5 on a circle of radius 2). Figures: the unbiased :math:`\widehat{\mathrm{MMD}}^2_u`
    (IMQ kernel at :math:`2 L \bar\sigma^2_z`) between the codes of ``--mmd-size`` test images
    and as many prior draws, beside the same estimate between two independent prior samples
    of that size (the estimator's noise floor); ``latent_map.png``, the test codes coloured by
    digit.

The protocol (networks, optimiser, metrics, seeds) is fixed in :data:`RUNS` and the functions
below, before any test figure is seen. Every run writes ``OUT/RUN/checkpoint/`` after each
epoch; ``--resume`` continues it, also with a larger ``--epochs`` (the learning rates are
constant, so the first epochs of a longer run are those of a shorter one), and
``--time-limit`` starts no new epoch after that many seconds. ``--evaluate-only`` scores the
networks of the last checkpoint without training (a run stopped between epochs). Figures go
to ``OUT/RUN/metrics.json``.

    nice -n 15 python benchmarks/adversarial_mnist.py --run aae16 --epochs 5 --out runs/adv
    nice -n 15 python benchmarks/adversarial_mnist.py --run aae16 --epochs 10 --resume \
        --out runs/adv

``--mnist`` defaults to the environment variable ``PPL_MODELS_MNIST`` (a folder with the four
idx files).

References
----------
Chen, X. et al. (2016). InfoGAN. NeurIPS.
Makhzani, A., Shlens, J., Jaitly, N., Goodfellow, I. & Frey, B. (2016). Adversarial
autoencoders. ICLR workshop (arXiv:1511.05644).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppl_models._shared.jsonsafe import to_json
from ppl_models.cli.adversarial_plots import plot_code_map, plot_samples
from ppl_models.cli.fit_adversarial import make_prior
from ppl_models.diagnostics import cluster_accuracy
from ppl_models.images import load_images
from ppl_models.infer import fit_adversarial
from ppl_models.infer.checkpoint import load_checkpoint
from ppl_models.models import AdversarialAutoencoder, ClusteringAdversarialAutoencoder, InfoGAN
from ppl_models.models.adversarial import imq_kernel, mmd_unbiased

#: Published figures: run -> (figure name, value, source).
PUBLISHED: dict[str, tuple[str, float, str]] = {
    "infogan": ("categorical-code accuracy", 0.95, "Chen et al. 2016, sec. 7.1 (about 5% error)"),
    "infogan-paper-lr": ("categorical-code accuracy", 0.95, "Chen et al. 2016, sec. 7.1"),
    "infogan-conv": ("categorical-code accuracy", 0.95, "Chen et al. 2016, sec. 7.1"),
    "infogan-mlp-shared": ("categorical-code accuracy", 0.95, "Chen et al. 2016, sec. 7.1"),
    "aae16": ("test error", 0.0955, "Makhzani et al. 2016, Table 3"),
    "aae30": ("test error", 0.0410, "Makhzani et al. 2016, Table 3"),
}

#: Training settings shared by every run (constant learning rates: resumable with more epochs).
TRAINING: dict[str, Any] = {"batch_size": 100, "lr": 2e-4, "lr_decay": 1.0,
                            "betas": (0.5, 0.999), "seed": 0}

HIDDEN = (256, 256)


def _infogan() -> InfoGAN:
    return InfoGAN(784, 62, n_categories=10, n_continuous=2, hidden=HIDDEN, d_hidden=HIDDEN,
                   q_hidden=HIDDEN, share_discriminator=False, output="unit")


def _infogan_mlp_shared() -> InfoGAN:
    return InfoGAN(784, 62, n_categories=10, n_continuous=2, hidden=HIDDEN, d_hidden=HIDDEN,
                   q_hidden=(128,), output="unit")


def _infogan_conv() -> InfoGAN:
    return InfoGAN(784, 62, n_categories=10, n_continuous=2, architecture="conv",
                   q_hidden=(128,), continuous_weight=0.1, output="unit")


def _clustering(k: int) -> Callable[[], ClusteringAdversarialAutoencoder]:
    return lambda: ClusteringAdversarialAutoencoder(
        784, k, 5, reconstruction="cross_entropy", hidden=HIDDEN, d_hidden=(256, 256))


def _mog() -> AdversarialAutoencoder:
    return AdversarialAutoencoder(784, 2, prior=make_prior("mog", 2),
                                  reconstruction="cross_entropy", hidden=HIDDEN,
                                  d_hidden=(256, 256))


#: run -> model builder (called after seeding torch with the run's seed).
RUNS: dict[str, Callable[[], Any]] = {
    "infogan": _infogan,
    "infogan-paper-lr": _infogan,
    "infogan-conv": _infogan_conv,
    "infogan-mlp-shared": _infogan_mlp_shared,
    "aae16": _clustering(16),
    "aae30": _clustering(30),
    "aae-mog": _mog,
}

#: Settings of a run that differ from :data:`TRAINING`. ``infogan-paper-lr``: the learning
#: rates of Chen et al. (2016, appendix C.1), 1e-3 for the generator (and Q) and 2e-4 for the
#: discriminator; added after the 2-epoch figures of ``infogan`` (discriminator loss 0.05, the
#: discriminator winning) had been seen, so it is reported as a second protocol.
#: ``infogan-conv``: the paper's rates too (fixed before any of its figures was seen).
OVERRIDES: dict[str, dict[str, Any]] = {"infogan-paper-lr": {"lr": 1e-3, "d_lr": 2e-4},
                                        "infogan-conv": {"lr": 1e-3, "d_lr": 2e-4},
                                        "infogan-mlp-shared": {"lr": 1e-3, "d_lr": 2e-4}}


def majority_error(train_clusters: np.ndarray, train_labels: np.ndarray,
                   test_clusters: np.ndarray, test_labels: np.ndarray) -> tuple[float, int]:
    """Test error when each cluster takes the majority training label of its members
    (clusters without training members count as wrong); also the number of clusters used."""
    k = int(max(train_clusters.max(), test_clusters.max())) + 1
    counts = np.zeros((k, int(train_labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (train_clusters, train_labels), 1)
    label_of = np.where(counts.sum(1) > 0, counts.argmax(1), -1)
    return float(np.mean(label_of[test_clusters] != test_labels)), int((counts.sum(1) > 0).sum())


def _per_epoch(values: list[float], steps: int = 600) -> list[float]:
    """Means of a per-step history over each epoch of ``steps`` steps (60000 / 100)."""
    return [float(np.mean(values[i:i + steps])) for i in range(0, len(values), steps)]


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             size: int = 2000) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + size]) for i in range(0, x.shape[0], size)])


def epoch_report(model: Any, x_probe: torch.Tensor) -> Callable[[int, dict], bool]:
    """A callback printing, after each epoch, the epoch's mean losses, the CPU time so far and,
    for an InfoGAN, how many categories :math:`Q` gives ``x_probe`` (training images, no
    labels): the progress of a long run, read before its figures."""
    cpu_start = time.process_time()

    def report(epoch: int, history: dict) -> bool:
        line: dict[str, Any] = {"epochs_done": epoch,
                                "cpu_s": round(time.process_time() - cpu_start, 1)}
        for name in ("d_loss", "g_loss", "information", "reconstruction"):
            if history.get(name):
                line[name] = round(float(np.mean(history[name][-600:])), 4)
        if isinstance(model, InfoGAN):
            was_training = model.training
            model.eval()
            codes = _batched(lambda x: model.infer_codes(x)[0].argmax(-1), x_probe)
            model.train(was_training)
            line["probe_category_counts"] = torch.bincount(
                codes, minlength=model.n_categories).tolist()
        print(json.dumps(line), flush=True)
        return False

    return report


def evaluate(run: str, model: Any, data: dict[str, torch.Tensor], out: Path,
             mmd_size: int) -> dict[str, Any]:
    """The run's figures on the test images (module docstring)."""
    model.eval()
    figures: dict[str, Any] = {}
    if run.startswith("infogan"):
        codes = _batched(lambda x: model.infer_codes(x)[0].argmax(-1), data["x_test"])
        figures["categorical_accuracy"] = cluster_accuracy(codes, data["y_test"])
        figures["categories_used"] = int(codes.unique().numel())
        figures["category_counts"] = torch.bincount(codes, minlength=model.n_categories).tolist()
        batch_stats = copy.deepcopy(model).train()  # batch norm on the test batches' statistics
        codes = _batched(lambda x: batch_stats.infer_codes(x)[0].argmax(-1), data["x_test"])
        figures["categorical_accuracy_batch_stats"] = cluster_accuracy(codes, data["y_test"])
    elif run.startswith("aae") and run != "aae-mog":
        train = _batched(model.cluster, data["x_train"]).numpy()
        test = _batched(model.cluster, data["x_test"]).numpy()
        error, used = majority_error(train, data["y_train"].numpy(), test,
                                     data["y_test"].numpy())
        figures.update(test_error=error, clusters_used=used,
                       hungarian_accuracy_test=cluster_accuracy(test, data["y_test"]))
    else:
        scale = 2.0 * model.latent_dim * float(model.prior.variance.mean())
        kernel = imq_kernel(scale)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(12345)
            rows = torch.randperm(data["x_test"].shape[0])[:mmd_size]
            codes = model.sample_codes(data["x_test"][rows]).double()
            draws = model.prior.sample((2 * mmd_size,)).double()
            figures["test_mmd"] = float(mmd_unbiased(codes, draws[:mmd_size], kernel))
            figures["prior_vs_prior_mmd"] = float(mmd_unbiased(draws[mmd_size:],
                                                               draws[:mmd_size], kernel))
        figures.update(mmd_size=mmd_size, mmd_kernel="imq", mmd_kernel_scale=scale)
        plot_code_map(model, data["x_test"], data["y_test"], out / "latent_map.png")
    plot_samples(model, out / "samples.png", seed=0)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", choices=sorted(RUNS), required=True)
    parser.add_argument("--mnist", default=os.environ.get("PPL_MODELS_MNIST"),
                        help="folder of the MNIST idx files (default $PPL_MODELS_MNIST)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/adversarial_mnist"))
    parser.add_argument("--mmd-size", type=int, default=2000)
    parser.add_argument("--evaluate-only", action="store_true",
                        help="score the last checkpoint's networks, no training")
    args = parser.parse_args(argv)
    if not args.mnist:
        parser.error("--mnist DIR or PPL_MODELS_MNIST is needed")
    out = args.out / args.run
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_images(f"mnist:{args.mnist}", split="train")
    x_test, y_test = load_images(f"mnist:{args.mnist}", split="test")
    data = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    torch.manual_seed(TRAINING["seed"])
    model = RUNS[args.run]()
    training = {**TRAINING, **OVERRIDES.get(args.run, {})}
    if args.evaluate_only:
        state = load_checkpoint(out / "checkpoint", model)
        history = state["history"]
        figures = {"run": args.run, "model": type(model).__name__, "config": model.config(),
                   "training": training, "evaluated": "checkpoint", "epochs_done":
                   int(state["epoch"]), "epoch_seconds": state["extra"]["epoch_seconds"],
                   "d_loss_per_epoch": _per_epoch(history.get("d_loss", [])),
                   "g_loss_per_epoch": _per_epoch(history.get("g_loss", [])),
                   "information_per_epoch": _per_epoch(history.get("information", [])),
                   "published": PUBLISHED.get(args.run),
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        figures.update(evaluate(args.run, model, data, out, args.mmd_size))
        (out / "metrics.json").write_text(to_json(figures))
        print(json.dumps({k: v for k, v in figures.items() if k not in ("config", "training")}))
        return 0
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    result = fit_adversarial(
        model, x_train, num_epochs=args.epochs, time_limit=args.time_limit,
        checkpoint_dir=out / "checkpoint", resume=args.resume, overwrite=not args.resume,
        progress=False, callback=epoch_report(model, x_train[:2000]), **training,
    )
    figures = {
        "run": args.run,
        "model": type(model).__name__,
        "config": model.config(),
        "training": training,
        "epochs_done": int(result.info["num_epochs"]),
        "epochs_asked": args.epochs,
        "resumed_from": result.info.get("resumed_from"),
        "stopped_by": result.info.get("stopped_by"),
        "train_seconds_all_sessions": result.fit_seconds,
        "session_cpu_seconds": time.process_time() - cpu_start,
        "session_wall_seconds": time.perf_counter() - wall_start,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "d_loss_per_epoch": _per_epoch(result.history.get("d_loss", [])),
        "g_loss_per_epoch": _per_epoch(result.history.get("g_loss", [])),
        "information_per_epoch": _per_epoch(result.history.get("information", [])),
        "session_epochs": int(result.info["num_epochs"]) - int(result.info.get("resumed_from")
                                                               or 0),
        "published": PUBLISHED.get(args.run),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    figures.update(evaluate(args.run, model, data, out, args.mmd_size))
    (out / "metrics.json").write_text(to_json(figures))
    print(json.dumps({k: v for k, v in figures.items() if k not in ("config", "training")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
