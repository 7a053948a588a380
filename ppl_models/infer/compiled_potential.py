r"""Value and gradient of a plain-tensor potential in one call, eager or ``torch.compile``-d, and
the ``potential_fn`` Pyro's NUTS takes from it.

The gradient of :math:`U` over a batch of flat unconstrained points :math:`u_{1..B}` comes from
``torch.func.grad_and_value`` of :math:`\sum_b U(u_b)` (the points do not interact, so the
gradient of the sum is each point's own gradient). Compiled with ``torch.compile(fullgraph=True,
dynamic=False)``, forward and backward become one generated C++ kernel set: a call costs a few
tenths of a millisecond instead of the ~1-3 ms of eager autograd through small operations.
The first call compiles (tens of seconds the first time on a machine; a few seconds once
inductor's on-disk caches hold the graph); a new batch size or data shape compiles again.

Pyro's NUTS asks a ``potential_fn(z: dict) -> U`` and differentiates it with autograd;
:class:`NUTSPotential` returns :math:`U` through a custom autograd function whose backward hands
back the gradient computed in the same call, so the integrator costs one compiled call per
leapfrog step.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping

import torch

from ppl_models.infer.mixture_potential import MixturePotential

__all__ = ["NUTSPotential", "ValueAndGrad", "value_and_grad"]

ValueAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@contextlib.contextmanager
def quiet_compilation() -> Iterator[None]:
    """Silence the deprecation notices torch's own compiler stack raises while compiling
    (``torch._inductor`` / ``torch.jit`` / ``torch._dynamo`` internals only), and compile in
    this process (no pool of compile workers on a small machine)."""
    import torch._inductor.config as inductor_config

    with warnings.catch_warnings(), inductor_config.patch(compile_threads=1):
        for module in (r"torch\._inductor.*", r"torch\.jit.*", r"torch\._dynamo.*"):
            warnings.filterwarnings("ignore", category=FutureWarning, module=module)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        yield


def value_and_grad(potential: MixturePotential, compile: bool = False) -> ValueAndGrad:
    r"""``f(u) -> (U(u), dU/du)`` for flat points ``u`` of shape ``(B, size)`` (values ``(B,)``,
    gradients ``(B, size)``, both detached).

    Parameters
    ----------
    potential : MixturePotential
    compile : bool
        ``torch.compile`` the function of ``torch.func.grad_and_value`` (compiled at the first
        call, under :func:`quiet_compilation`); otherwise eager autograd, which is faster
        uncompiled.
    """
    if not compile:

        def eager(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.enable_grad():
                u = u.detach().requires_grad_(True)
                value = potential(u)
                (grad,) = torch.autograd.grad(value.sum(), u)
            return value.detach(), grad

        return eager

    def objective(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = potential(u)
        return value.sum(), value

    compiled = torch.compile(
        torch.func.grad_and_value(objective, has_aux=True), fullgraph=True, dynamic=False
    )
    seen: set[tuple[torch.Size, torch.dtype]] = set()

    def call(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = u.detach()
        key = (u.shape, u.dtype)
        if key in seen:
            grad, (_, value) = compiled(u)
        else:  # this call compiles
            with quiet_compilation():
                grad, (_, value) = compiled(u)
            seen.add(key)
        return value, grad

    return call


class _WithGradient(torch.autograd.Function):
    """``value`` as a function of the site tensors ``values``, whose gradients are the given
    ``grads`` (one per site, same shapes)."""

    @staticmethod
    def forward(ctx, value, grads, *values):  # the site values carry the graph
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        return None, None, *(grad_output * grad for grad in ctx.grads)


class NUTSPotential:
    r"""Pyro's ``potential_fn`` (``dict of unconstrained site values -> U``) from a
    :class:`MixturePotential` and its value-and-gradient function.

    Parameters
    ----------
    potential : MixturePotential
    compile : bool
        As :func:`value_and_grad`.

    Attributes
    ----------
    compiled : bool
    """

    def __init__(self, potential: MixturePotential, compile: bool = False) -> None:
        self.potential = potential
        self.compiled = compile
        self._value_and_grad = value_and_grad(potential, compile)

    def warm_up(self, unconstrained: Mapping[str, torch.Tensor]) -> None:
        """One call at a point (compiles, when compiling), e.g. before forking chains."""
        self(dict(unconstrained))

    def grads(
        self, unconstrained: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``(dU/du per site, U)`` without autograd: what Pyro's ``potential_grad`` returns."""
        potential = self.potential
        flat = torch.cat([unconstrained[name].detach().reshape(-1) for name in potential.sites])
        value, grad = self._value_and_grad(flat.unsqueeze(0))
        return potential.unpack(grad[0]), value[0]

    def __call__(self, unconstrained: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:math:`U(u)`, differentiable in every site value through the precomputed
        gradient."""
        potential = self.potential
        values = [unconstrained[name] for name in potential.sites]
        flat = torch.cat([value.detach().reshape(-1) for value in values])
        value, grad = self._value_and_grad(flat.unsqueeze(0))
        grads = potential.unpack(grad[0])
        return _WithGradient.apply(value[0], [grads[name] for name in potential.sites], *values)
