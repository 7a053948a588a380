r"""Epoch time of our Pyro VAE (``fit_svi``) against a plain PyTorch VAE with the same networks.

Both train the same model, a VAE with a Bernoulli decoder and :math:`\mathcal N(0, I)` prior
(Kingma & Welling 2014), with the networks of :mod:`ppl_models.nn` (MLP, one hidden layer of
``--hidden`` units, ``--latent-dim`` code), Adam at lr 1e-3, minibatches of ``--batch-size``
rows drawn by shuffling, on MNIST-sized data:

(a) ``fit_svi(VAE(...), x, batch_size=, num_epochs=, objective=...)``, for the default
    objective (``"auto"``: the model's own ELBO estimator) and for ``objective="pyro"``
    (Pyro's ``Trace_ELBO`` traced every step);
(b) a hand-written loop: encoder, reparameterised draw, decoder, ``-log Bernoulli +
    closed-form KL``, ``backward``, ``Adam.step`` - what one would write without Pyro.

Data: ``--mnist DIR`` (or the environment variable ``PPL_MODELS_MNIST``) reads the four MNIST
idx files and thresholds the pixels at 0.5; without either, synthetic binary data of the same
shape (60000 x 784, pixels ~ Bernoulli(0.13), MNIST's mean). Reported: the median seconds per
epoch over ``--epochs`` epochs (the first epoch of each run is a warm-up and not counted) and
the ratio ours / plain. Goal: ratio <= 1.15. ``torch.get_num_threads()`` is printed; the
machine's load matters (``uptime``), so run it when the machine is quiet.

    python benchmarks/vae_overhead.py               # synthetic 60000 x 784, 3 timed epochs
    python benchmarks/vae_overhead.py --mnist /work/shared/data/mnist
    python benchmarks/vae_overhead.py --quick       # tiny smoke run (seconds)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from ppl_models.images import load_images
from ppl_models.infer import fit_svi
from ppl_models.models import VAE

RATIO_GOAL = 1.15


def _data(args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    location = args.mnist or os.environ.get("PPL_MODELS_MNIST")
    if args.quick:
        n, d = 2000, 784
    else:
        n, d = 60000, 784
    if location:
        x, _ = load_images(f"mnist:{location}", split="train", binarize="threshold")
        return x[:n], f"MNIST train ({location}), thresholded, first {min(n, len(x))} rows"
    generator = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((n, d), 0.13), generator=generator)
    return x, f"synthetic Bernoulli(0.13), {n} x {d}"


def _model(args: argparse.Namespace) -> VAE:
    torch.manual_seed(args.seed)
    return VAE(784, args.latent_dim, hidden=(args.hidden,))


def _ours(args: argparse.Namespace, x: torch.Tensor, objective: str) -> tuple[float, str]:
    result = fit_svi(_model(args), x, batch_size=args.batch_size, num_epochs=args.epochs + 1,
                     objective=objective, seed=args.seed, progress=False)
    return statistics.median(result.info["epoch_seconds"][1:]), result.info["objective"]


def _plain(args: argparse.Namespace, x: torch.Tensor) -> float:
    model = _model(args)
    encoder, decoder = model.encoder, model.decoder
    optimiser = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    generator = torch.Generator().manual_seed(args.seed)
    n = x.shape[0]
    times = []
    for _ in range(args.epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        for rows in order.split(args.batch_size):
            batch = x[rows]
            loc, scale = encoder(batch)
            z = loc + scale * torch.randn_like(loc)
            logits = decoder(z)
            reconstruction = -F.binary_cross_entropy_with_logits(
                logits, batch, reduction="none").sum(-1)
            kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum(-1)
            loss = -(reconstruction - kl).sum() * (n / batch.shape[0])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            float(loss.detach())  # one synchronisation per step, as fit_svi reads its loss
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", help="folder with the MNIST idx files (else synthetic)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (plus 1 warm-up)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2000 rows, 1 timed epoch")
    args = parser.parse_args()
    if args.quick:
        args.epochs = 1
    x, what = _data(args)
    print(f"data: {what}; batch {args.batch_size}, hidden {args.hidden}, "
          f"latent {args.latent_dim}, {args.epochs} timed epochs (+1 warm-up)")
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    plain = _plain(args, x)
    print(f"plain PyTorch loop         : {plain:8.3f} s/epoch")
    for objective in ("auto", "pyro"):
        ours, used = _ours(args, x, objective)
        ratio = ours / plain
        verdict = "met" if ratio <= RATIO_GOAL else "not met"
        print(f"fit_svi objective={objective:<5} ({used}): {ours:8.3f} s/epoch, "
              f"ratio {ratio:.3f} (goal <= {RATIO_GOAL}: {verdict})")


if __name__ == "__main__":
    main()
