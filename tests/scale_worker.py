"""Run by ``tests/test_scale.py`` under ``torchrun --standalone --nproc_per_node 2``.

One launch, several data-parallel fits; rank 0 saves what each rank saw into
``OUT/results.pt`` for the test to compare with single-process references:

* ``em``: distributed EM of a Gaussian mixture, each rank holding its own rows (rank 1's as a
  memory-mapped ``.npy``), blocks of 300 rows; each rank's parameters and iterations.
* ``gmm_svi``: a Gaussian mixture (labels enumerated) by minibatch SVI with a point guide,
  61 rows in global batches of 15 (8 and 7 rows per rank; the last one, of 1 row, leaves
  rank 1 an empty piece);
  Pyro's store after every epoch.
* ``vae``: a VAE by its own ELBO estimator, one global batch of 45 rows per epoch (23 and 22
  per rank), each rank's networks initialised from its own seed; the networks after every
  step.
* ``resume``: a VAE stopped after 2 of 3 epochs and resumed from rank 0's checkpoint, against
  the same run uninterrupted (largest difference of the final parameters).
* ``gan``: the same for a GAN (the adversarial step: one reduction per player's update), and
  each rank's final parameters.
* ``gan_steps``: a GAN, one global batch of 45 rows per epoch (23 and 22 per rank), each
  rank's networks initialised from its own seed; its networks after every step.
* ``cli``: ``ppl-models fit gan`` and ``fit aae`` run on both ranks, ``--out OUT/cli_MODELr``
  (only rank 0's may appear); each rank's exit code.
* ``info``: each fit's ``FitResult.info`` counts of parameters reduced by DDP and by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from torch.distributions import constraints

from ppl_models.cli import main as cli
from ppl_models.infer import distributed, fit_adversarial, fit_em, fit_svi
from ppl_models.models import GAN, VAE, GaussianMixture


def em_data() -> np.ndarray:
    rng = np.random.default_rng(0)
    parts = [rng.normal(m, s, (n, 3)) for m, s, n in ((0.0, 1.0, 1000), (2.0, 0.7, 900),
                                                      (-2.0, 1.5, 600))]
    return rng.permutation(np.concatenate(parts)) + 50.0


EM_SPLIT = 1100
EM = {"tol": 1e-7, "max_iter": 300}


def gmm_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.cat([torch.randn(30, 1, generator=g) - 2, torch.randn(31, 1, generator=g) + 2]
                     ).double()


@config_enumerate
def gmm_model(data, n_obs=None, subsample=None):
    n_obs = data.shape[0] if n_obs is None else n_obs
    w = pyro.sample("weights", dist.Dirichlet(torch.ones(2, dtype=data.dtype)))
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(torch.zeros(2, dtype=data.dtype), 10.0))
    with pyro.plate("data", n_obs, subsample=subsample):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(locs[z], 1.0), obs=data[:, 0])


gmm_model.enumerated_sites = ("z",)
gmm_model.local_plate = "data"


def gmm_guide(data, n_obs=None, subsample=None):
    w = pyro.param("w_q", torch.full((2,), 0.5, dtype=data.dtype), constraint=constraints.simplex)
    locs = pyro.param("locs_q", torch.tensor([-1.0, 1.0], dtype=data.dtype))
    pyro.sample("weights", dist.Delta(w, event_dim=1))
    with pyro.plate("components", 2):
        pyro.sample("locs", dist.Delta(locs))


GMM_SVI = {"batch_size": 15, "num_epochs": 2, "lr": 0.05, "num_draws": 0, "seed": 3}


def vae_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return (torch.rand(45, 8, generator=g) < 0.4).float()


def vae_model(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(8, 2, hidden=(8,))


VAE_SVI = {"batch_size": 45, "num_epochs": 3, "lr": 1e-2, "seed": 5}
RESUME_SVI = {"batch_size": 15, "num_epochs": 3, "lr": 1e-2, "seed": 7}


def gan_model(seed: int = 0) -> GAN:
    torch.manual_seed(seed)
    return GAN(3, 2, hidden=(8,), d_hidden=(8,))


def gan_data() -> torch.Tensor:
    return torch.randn(45, 3, generator=torch.Generator().manual_seed(4))


CLI_SMALL = ["--epochs", "2", "--batch-size", "150", "--hidden", "16", "--quiet"]
GAN_STEPS = {"batch_size": 45, "num_epochs": 3, "lr": 1e-2, "seed": 6}


def gan_fit(**options) -> torch.Tensor:
    torch.manual_seed(0)
    model = GAN(3, 2, hidden=(8,), d_hidden=(8,))
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(1))
    fit_adversarial(model, x, batch_size=20, num_epochs=3, seed=2, progress=False, **options)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def store() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def parallel_info(fit) -> dict:
    return {k: fit.info.get(k) for k in ("ddp_parameters", "all_reduced_parameters")}


def main(out: Path) -> None:
    distributed.init_from_env()
    rank, world = distributed.world()
    assert world == 2
    results: dict = {"info": {}}

    # Distributed EM, rank 1's rows memory-mapped.
    x = em_data()
    if rank == 0:
        shard = torch.from_numpy(x[:EM_SPLIT])
    else:
        np.save(out / "shard1.npy", x[EM_SPLIT:])
        shard = np.load(out / "shard1.npy", mmap_mode="r")
    fit = fit_em(GaussianMixture(3, "full"), shard, distributed=True, chunk_size=300,
                 progress=False, **EM)
    results["em"] = distributed.all_gather_objects(
        {"params": fit.params, "n_iter": fit.n_iter, "ll": fit.info["log_likelihood"]})

    # A Gaussian mixture by minibatch SVI.
    seen: list = []
    fit = fit_svi(gmm_model, gmm_data(), guide=gmm_guide, progress=False,
                  callback=lambda epoch, history: seen.append(store()), **GMM_SVI)
    results["info"]["gmm_svi"] = parallel_info(fit)
    results["gmm_svi"] = distributed.all_gather_objects(seen)

    # A VAE by its own ELBO, one step per epoch, each rank building other networks: DDP starts
    # every rank from rank 0's.
    model = vae_model(seed=rank)
    steps: list = []
    fit = fit_svi(model, vae_data(), progress=False,
                  callback=lambda epoch, history: steps.append(
                      {k: v.detach().clone() for k, v in model.state_dict().items()}),
                  **VAE_SVI)
    results["info"]["vae"] = parallel_info(fit)
    results["vae"] = distributed.all_gather_objects(steps)

    # Stopped after 2 epochs and resumed, against uninterrupted.
    whole = vae_model()
    fit_svi(whole, vae_data(), progress=False, **RESUME_SVI)
    part = vae_model()
    folder = out / f"checkpoint{rank}"  # rank 1's must stay absent: only rank 0 writes
    fit_svi(part, vae_data(), progress=False, checkpoint_dir=folder,
            callback=lambda epoch, history: epoch == 2, **RESUME_SVI)
    resumed = vae_model()
    fit_svi(resumed, vae_data(), progress=False, checkpoint_dir=folder, resume=True,
            **RESUME_SVI)
    gap = max(float((a - b).abs().max()) for a, b in zip(
        whole.state_dict().values(), resumed.state_dict().values(), strict=True))
    stopped = max(float((a - b).abs().max()) for a, b in zip(
        whole.state_dict().values(), part.state_dict().values(), strict=True))
    results["resume"] = distributed.all_gather_objects({"gap": gap, "stopped_gap": stopped})

    # A GAN: interrupted and resumed against uninterrupted, on each rank.
    whole = gan_fit()
    part = gan_fit(checkpoint_dir=out / f"gan{rank}", callback=lambda epoch, history: epoch == 2)
    resumed = gan_fit(checkpoint_dir=out / f"gan{rank}", resume=True)
    results["gan"] = distributed.all_gather_objects({"whole": whole, "part": part,
                                                     "resumed": resumed})

    # A GAN, one step per epoch, each rank building other networks.
    gan = gan_model(seed=rank)
    steps = []
    fit = fit_adversarial(gan, gan_data(), progress=False,
                          callback=lambda epoch, history: steps.append(
                              {k: v.detach().clone() for k, v in gan.state_dict().items()}),
                          **GAN_STEPS)
    results["gan_steps"] = distributed.all_gather_objects(steps)
    results["info"]["gan"] = parallel_info(fit)

    # The command line, every rank running the same command.
    codes = {model: cli(["fit", model, *CLI_SMALL, "--out", str(out / f"cli_{model}{rank}")])
             for model in ("gan", "aae")}
    results["cli"] = distributed.all_gather_objects(codes)
    if rank == 0:
        torch.save(results, out / "results.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
