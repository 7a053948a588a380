r"""Test log-likelihood of the VAE family on binarized MNIST, beside the published figures.

For each prior of ``--priors`` (``standard``, ``mog``, ``vamp``, ``gmvae``) the script trains
a VAE on the ``train`` split of the fixed binarization of Larochelle & Murray (2011) (an
``.npz`` with ``train``, ``valid``, ``test`` and, optionally, ``test_labels``) by minibatch SVI
for as many epochs as ``--time-budget`` seconds hold (estimated from one epoch on a tenth of
the data; KL warm-up over the first ``--kl-warmup`` epochs, at most all
but the last), then reports on the first ``--test-size`` test images:

* the test ELBO and the importance-weighted bound :math:`\mathcal L_K` with
  ``--particles`` = K samples (Burda et al. 2016; the papers use K = 5000);
* for the GMVAE, the unsupervised clustering accuracy of :math:`\arg\max_y q(y \mid x)`
  against ``test_labels`` with K = ``--components`` labels (Hungarian matching).

Published figures on this data set (MLP encoders/decoders, 40-d code, hundreds of epochs with
warm-up): standard VAE about -89.9 nats and VampPrior about -85.6 nats (Tomczak & Welling
2018, Table 2, K = 5000); goals: within 1 nat of them, and GMVAE accuracy >= 0.90. A budget of
minutes is far from that training; the script prints what it reached.

    python benchmarks/vae_mnist.py --data /work/shared/data/binarized_mnist/binarized_mnist.npz
    python benchmarks/vae_mnist.py --data PATH --priors standard,gmvae --time-budget 300 \
        --test-size 1000 --particles 500

References
----------
Tomczak, J. M. & Welling, M. (2018). VAE with a VampPrior. AISTATS.
Burda, Y., Grosse, R. & Salakhutdinov, R. (2016). Importance weighted autoencoders. ICLR.
Dilokthanakul, N. et al. (2016). Deep unsupervised clustering with Gaussian mixture
variational autoencoders. arXiv:1611.02648.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable

import torch

from ppl_models.diagnostics import assign_clusters, cluster_accuracy
from ppl_models.images import load_images
from ppl_models.infer import elbo_terms, fit_svi, log_marginal_likelihood
from ppl_models.models import GMVAE, VAE, MixtureOfGaussiansPrior, VampPrior

#: Published test log-likelihoods (nats), Tomczak & Welling (2018), Table 2.
PUBLISHED: dict[str, float] = {"standard": -89.9, "vamp": -85.6}
LOGLIK_GOAL = 1.0
ACCURACY_GOAL = 0.90

#: prior name -> builder(latent_dim, hidden, components) -> model.
BUILDERS: dict[str, Callable[[int, int, int], VAE]] = {
    "standard": lambda L, h, k: VAE(784, L, hidden=(h,)),
    "mog": lambda L, h, k: VAE(784, L, hidden=(h,), prior=MixtureOfGaussiansPrior(k)),
    "vamp": lambda L, h, k: VAE(784, L, hidden=(h,), prior=VampPrior(500)),
    "gmvae": lambda L, h, k: GMVAE(784, L, k, hidden=(h,)),
}


def _train(model: VAE, x: torch.Tensor, args: argparse.Namespace) -> tuple[int, float, float]:
    """Train for as many epochs as the budget holds; returns epochs, seconds, train ELBO.

    One ``fit_svi`` call (so Adam and the learning-rate schedule run over the whole fit): the
    number of epochs is fixed beforehand from the time of one epoch on a tenth of the data,
    measured on a copy of the model that is then thrown away.
    """
    if args.epochs:
        result = fit_svi(model, x, batch_size=args.batch_size, num_epochs=args.epochs,
                         kl_warmup_epochs=min(args.kl_warmup, args.epochs - 1),
                         seed=args.seed, progress=False)
        return args.epochs, result.fit_seconds, result.history["elbo"][-1]
    probe_rows = max(args.batch_size, x.shape[0] // 10)
    probe = fit_svi(copy.deepcopy(model), x[:probe_rows], batch_size=args.batch_size,
                    num_epochs=1, seed=args.seed, progress=False)
    epoch_estimate = probe.info["epoch_seconds"][0] * x.shape[0] / probe_rows
    epochs = max(1, int(args.time_budget // epoch_estimate))
    print(f"  about {epoch_estimate:.1f} s per epoch: {epochs} epochs", flush=True)
    result = fit_svi(model, x, batch_size=args.batch_size, num_epochs=epochs,
                     kl_warmup_epochs=min(args.kl_warmup, epochs - 1), seed=args.seed,
                     progress=False)
    return epochs, result.fit_seconds, result.history["elbo"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="binarized MNIST .npz")
    parser.add_argument("--priors", default="standard,mog,vamp,gmvae")
    parser.add_argument("--time-budget", type=float, default=3600.0, help="seconds per prior")
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--particles", type=int, default=5000)
    parser.add_argument("--latent-dim", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--epochs", type=int,
                        help="train this many epochs instead of filling --time-budget")
    parser.add_argument("--kl-warmup", type=int, default=10, help="KL warm-up epochs (capped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    priors = [p.strip() for p in args.priors.split(",") if p.strip()]
    unknown = sorted(set(priors) - set(BUILDERS))
    if unknown:
        parser.error(f"unknown priors {unknown}; choose from {sorted(BUILDERS)}")
    x_train, _ = load_images(f"binarized-mnist:{args.data}", split="train")
    x_test, y_test = load_images(f"binarized-mnist:{args.data}", split="test")
    x_test = x_test[: args.test_size]
    y_test = None if y_test is None else y_test[: args.test_size]
    print(f"binarized MNIST: train {tuple(x_train.shape)}, test {tuple(x_test.shape)}; "
          f"budget {args.time_budget:.0f} s per prior, K = {args.particles}; torch threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for prior in priors:
        torch.manual_seed(args.seed)
        model = BUILDERS[prior](args.latent_dim, args.hidden, args.components)
        print(f"{prior}:", flush=True)
        epochs, seconds, train_elbo = _train(model, x_train, args)
        model.eval()
        start = time.perf_counter()
        elbo = elbo_terms(model, x_test)["elbo"]
        loglik = log_marginal_likelihood(model, x_test, args.particles, progress=False)
        clusters = assign_clusters(model, x_test)
        accuracy = (None if clusters is None or y_test is None
                    else cluster_accuracy(clusters, y_test))
        row = {"prior": prior, "epochs": epochs, "train_seconds": round(seconds, 1),
               "train_elbo": train_elbo, "test_elbo": elbo, "test_log_likelihood": loglik,
               "published": PUBLISHED.get(prior), "cluster_accuracy": accuracy,
               "eval_seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        published = PUBLISHED.get(prior)
        gap = "" if published is None else (
            f" (published {published:.1f}; gap {loglik - published:+.2f}, goal within "
            f"{LOGLIK_GOAL}: {'met' if abs(loglik - published) <= LOGLIK_GOAL else 'not met'})")
        acc = "" if accuracy is None else (
            f"; cluster accuracy {accuracy:.3f} (goal >= {ACCURACY_GOAL}: "
            f"{'met' if accuracy >= ACCURACY_GOAL else 'not met'})")
        print(f"{prior}: {epochs} epochs in {seconds:.0f} s; test ELBO {elbo:.2f}, "
              f"log p(x) >= {loglik:.2f} nats{gap}{acc}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
