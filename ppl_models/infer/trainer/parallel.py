r"""One optimiser's update in a data-parallel run: the networks in DDP, the rest by hand.

Under ``torchrun`` each rank computes the loss of its piece of the global batch. For one
optimiser, :class:`ParallelUpdate` splits the parameters it trains in two:

* the **networks' parameters** (those of the model's ``nn.Module``\ s) are trained through
  :class:`torch.nn.parallel.DistributedDataParallel`: DDP copies rank 0's values to every
  rank when it is built and averages their gradients over the ranks in buckets, overlapped
  with the backward pass;
* the **global Pyro parameters** (the rest of Pyro's store: a guide's locations and scales,
  a mixture's weights) have their gradients, and the loss, summed over the ranks by hand in
  one ``all_reduce`` of a flat buffer
  (:func:`~ppl_models.infer.distributed.all_reduce_gradients`).

Weights. Rank :math:`r` holds :math:`b_r` of the :math:`B` rows of the global batch and its
loss :math:`\ell_r` is already scaled by :math:`N / b_r` (the plate's subsampling). One
process seeing the whole batch would step along :math:`\sum_r w_r \nabla \ell_r` with
:math:`w_r = b_r / B`. DDP averages with equal weights :math:`1/W` over the :math:`W` ranks,
so each rank back-propagates :math:`W w_r \ell_r`: DDP's mean is then
:math:`\frac1W \sum_r W w_r \nabla\ell_r = \sum_r w_r \nabla \ell_r`, and the global
parameters' sum is taken with weight :math:`1/W` to match. With equal pieces
:math:`W w_r = 1` and this is plain DDP; with unequal ones (a last, short batch) the
estimator stays the unbiased one of the full data.

DDP's reducer fires only for a backward that follows a forward through its wrapper, once per
forward. An update's whole differentiable loss (an ELBO may call a network several times) is
therefore one call of one wrapper module, :class:`_Objective`, whose ``forward(fn, ...)``
returns ``fn(...)`` and whose parameters are the same ``nn.Parameter`` objects the optimiser
holds: the model, its ``state_dict``, Pyro's parameter names and the checkpoints are those of
one process. An adversarial step has one wrapper per player; a backward through the other
player's networks (the generator's loss goes through the discriminator) does not trigger that
player's reducer, which only listens after its own forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ppl_models.infer import distributed

__all__ = ["ParallelUpdate"]


class _Objective(torch.nn.Module):
    """A loss function as a module over the parameters it trains: ``forward(fn, *args,
    **kwargs)`` returns ``fn(*args, **kwargs)``. The parameters are registered, not copied."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__()
        self.params = torch.nn.ParameterList(params)

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


class ParallelUpdate:
    """Loss, backward and gradient reduction of one optimiser in a data-parallel run.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        The optimiser whose parameters this update trains (groups added later are treated as
        global parameters).
    networks : iterable of torch.nn.Module
        The modules whose parameters go through DDP (the model's networks); an optimiser
        parameter in none of them is global.
    world : int
        The number of ranks.

    Notes
    -----
    DDP is built with its defaults (``find_unused_parameters=False``): every network
    parameter of the optimiser must receive a gradient in each update (a zero one counts),
    as for every model of this package; otherwise DDP raises at the next update, reporting
    parameters that received no gradient.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, networks: Iterable[torch.nn.Module],
                 world: int) -> None:
        self.optimizer, self.world = optimizer, world
        owned = {id(p) for module in networks for p in module.parameters()}
        nets = [p for p in self._params() if id(p) in owned and p.requires_grad
                and isinstance(p, torch.nn.Parameter)]
        self._in_ddp = {id(p) for p in nets}
        self.ddp: DistributedDataParallel | None = None
        if nets:
            device = nets[0].device
            self.ddp = DistributedDataParallel(
                _Objective(nets), device_ids=[device.index] if device.type == "cuda" else None,
            )

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def global_params(self) -> list[torch.Tensor]:
        """The optimiser's parameters outside DDP (reduced by hand)."""
        return [p for p in self._params() if id(p) not in self._in_ddp]

    def __call__(self, weight: float, fn: Callable[..., tuple[torch.Tensor, Any]], *args: Any,
                 **kwargs: Any) -> tuple[float, Any]:
        r"""``loss, extra = fn(*args, **kwargs)`` on this rank's piece (through DDP), weighted
        by ``world * weight`` and back-propagated; the global parameters' gradients summed
        over the ranks. Returns the global batch's loss :math:`\sum_r w_r \ell_r` and
        ``extra``; the optimiser's ``step`` is the caller's."""
        loss, extra = (self.ddp(fn, *args, **kwargs) if self.ddp is not None
                       else fn(*args, **kwargs))
        scaled = loss * (self.world * weight)
        scaled.backward()
        value = distributed.all_reduce_gradients(self.global_params(), scaled.detach(),
                                                 1.0 / self.world)
        return value, extra
