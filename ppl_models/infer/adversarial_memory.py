r"""Memory an adversarial fit will need, estimated before it starts (the GAN / AAE / WAE
families; the other families are in :mod:`ppl_models.infer.resources`).

=============================== ===================================================================
what                            bytes
=============================== ===================================================================
data                            ``(N_train + N_test) x D`` pixels (float32)
networks                        every parameter of both players four times (the value, its
                                gradient, Adam's two moments) and the buffers once
training (per step)             the activations of one discriminator update and one generator
                                update on ``B`` rows, twice (saved for the backward pass, and
                                their gradients); measured by one forward pass of both on two
                                rows, every leaf module's output counted, scaled to ``B``
code MMD (autoencoders)         the command line's :math:`\widehat{\mathrm{MMD}}^2_u` of the
                                ``N_test`` test codes against as many prior draws, in float64:
                                the three ``N_test x N_test`` kernel matrices kept, plus the
                                kernel's temporaries (the ``N x N x L`` differences and their
                                squares, and two ``N x N`` scale terms)
=============================== ===================================================================

Like :func:`ppl_models.infer.resources.vae_memory` it is an estimate within a small factor;
:func:`ppl_models.infer.resources.check_memory` turns it into a one-line refusal.
"""

from __future__ import annotations

import torch

from ppl_models.infer.resources import MemoryEstimate, format_bytes
from ppl_models.models import AdversarialAutoencoder, AdversarialModel

__all__ = ["adversarial_memory", "step_activation_bytes"]

#: A training step keeps the forward activations for the backward pass and gives each a
#: gradient of its size.
TRAINING_FACTOR = 2
#: Rows of the probing forward pass (2: batch normalisation needs more than one).
_PROBE_ROWS = 2


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")


def step_activation_bytes(model: AdversarialModel, n_features: int) -> int:
    """Bytes per row of the outputs of every leaf module in one discriminator and one
    generator forward pass (probed on two zero rows, the model's RNG use isolated)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    total = 0

    def count(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        for tensor in output if isinstance(output, tuple) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()

    handles = [m.register_forward_hook(count) for m in leaves]
    x = torch.zeros(_PROBE_ROWS, n_features, dtype=next(model.parameters()).dtype)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            draws = model.adversarial_draws(x)
            if model.discriminator_parameters():
                model.discriminate(draws.real)
                model.discriminate(draws.fake)
            model.generator_terms(x, draws)
    finally:
        for handle in handles:
            handle.remove()
    return -(-total // _PROBE_ROWS)


def adversarial_memory(
    model: AdversarialModel,
    n_train: int,
    n_features: int,
    *,
    batch_size: int,
    n_test: int = 1,
) -> MemoryEstimate:
    r"""Estimated memory of training an adversarial model and scoring it (module table).

    Parameters
    ----------
    model : AdversarialModel
        Built (its networks are counted parameter by parameter and probed once).
    n_train, n_test : int
        Rows of the training and test data.
    n_features : int
        Columns of the data the model is fitted on.
    batch_size : int
        Training minibatch ``B``.

    Returns
    -------
    MemoryEstimate
    """
    if not isinstance(model, AdversarialModel) or not isinstance(model, torch.nn.Module):
        raise ValueError(f"adversarial_memory needs an adversarial model (an nn.Module); got "
                         f"{type(model).__name__}")
    _check_sizes(n_train=n_train, n_features=n_features, batch_size=batch_size, n_test=n_test)
    pixel = 4
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    resident = {
        "training and test data": (n_train + n_test) * n_features * pixel,
        "networks, gradients and Adam moments (4 copies)": 4 * weights + buffers,
    }
    batch = min(batch_size, n_train)
    per_row = step_activation_bytes(model, n_features)
    phases = {"training": {
        f"activations of a step on {batch} rows, with gradients":
            TRAINING_FACTOR * batch * per_row,
    }}
    if isinstance(model, AdversarialAutoencoder):
        n, latent = n_test, model.latent_dim
        phases["code MMD on the test set"] = {
            f"kernel matrices ({n} x {n}, float64)": 3 * n * n * 8,
            "kernel temporaries": (2 * latent + 2) * n * n * 8,
        }
    what = (f"a {type(model).__name__} on {n_train} x {n_features} data "
            f"({format_bytes(weights)} of weights)")
    return MemoryEstimate(what, resident, phases)
