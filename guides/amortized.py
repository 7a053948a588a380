r"""Amortised guides: an encoder network for the per-observation latents.

For a model with a plate of observations :math:`n = 1..N` holding continuous latents
:math:`z_n` (declared as ``local_sites`` in ``local_plate``), the local part of the guide is

.. math::

    q_\phi(z_n \mid x_n) = T_\#\,\mathcal N\!\left(\mu_\phi(x_n),\
        \mathrm{diag}\,\exp(2 \ell_\phi(x_n))\right)

with one multilayer perceptron :math:`x_n \mapsto (\mu_\phi, \ell_\phi)` shared by every
observation (Kingma & Welling, 2014, "Auto-encoding variational Bayes", ICLR; Rezende et al.,
2014; Gershman & Goodman, 2014, "Amortized inference in probabilistic reasoning") and
:math:`T` the bijection from the real space onto the site's support (identity for real sites).
The global latents get any other guide family; :class:`AmortizedGuide` joins both with Pyro's
``AutoGuideList``, the local sites blocked from the global part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide, AutoGuideList
from torch import nn
from torch.distributions import Transform, biject_to

__all__ = ["AmortizedGuide", "AmortizedNormal", "Encoder", "first_argument"]


def first_argument(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The observations an encoder reads by default: the model's first positional argument,
    else its ``data`` keyword."""
    if args:
        return args[0]
    if "data" in kwargs:
        return kwargs["data"]
    raise ValueError(
        "the amortized guide reads the observations from the model's first argument (or "
        "data=), but the model was called without one; pass inputs=callable(*args, **kwargs)"
    )


class Encoder(nn.Module):
    """Multilayer perceptron from one observation to a Gaussian's location and log-scale.

    Parameters
    ----------
    in_features : int
        Size of one (flattened) observation.
    out_features : int
        Size of the (flattened, unconstrained) local latents of one observation.
    hidden : sequence of int
        Widths of the hidden layers (Softplus activations).
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (64,)):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.Softplus()]
            width = size
        layers.append(nn.Linear(width, 2 * out_features))
        self.net = nn.Sequential(*layers)
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, in_features) -> (loc, log_scale)``, each ``(B, out_features)``."""
        out = self.net(x)
        return out[..., : self.out_features], out[..., self.out_features :]


@dataclass(frozen=True)
class _LocalSite:
    """How one local site is encoded: where its slice of the encoder output goes."""

    name: str
    start: int
    size: int
    shape: tuple[int, ...]  # unconstrained value of one observation (plate axis removed)
    axis: int  # position of the plate axis in the unconstrained value (negative)
    event_dim: int  # event dims of the unconstrained value
    transform: Transform
    plates: tuple[str, ...]


class AmortizedNormal(AutoGuide):
    r"""Encoder guide :math:`q_\phi(z_n \mid x_n)` for the continuous latents of one plate.

    Parameters
    ----------
    model : callable
        The Pyro model (only ``sites`` are read from it).
    sites : sequence of str
        The per-observation latent sites to encode; each must sit in ``local_plate`` and have a
        continuous support.
    local_plate : str
        Name of the plate of observations.
    hidden : sequence of int
        Hidden widths of the encoder (:class:`Encoder`).
    inputs : callable, optional
        ``inputs(*args, **kwargs) -> Tensor (N, ...)``: the observations, one row per member
        of the plate (default :func:`first_argument`). Rows are standardised with the mean and
        standard deviation of those seen at the first call.

    Notes
    -----
    Minibatches: when the plate is subsampled, the rows encoded are the plate's subsample
    indices if the inputs have the plate's full size, or the inputs as given if they have the
    subsample's size (a model called on a minibatch; when the model gives the minibatch's row
    indices explicitly, the guide needs the model's plates through ``create_plates``, see
    :func:`guides.build`). The encoder is a plain ``torch.nn``
    module; reading it inside the guide registers it with ``pyro.module`` (under this guide's
    name), so ``SVI`` trains it with the other parameters.
    """

    def __init__(
        self,
        model: Callable,
        sites: Sequence[str],
        local_plate: str,
        *,
        hidden: Sequence[int] = (64,),
        inputs: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        super().__init__(poutine.block(model, expose=list(sites)))
        self.sites = tuple(sites)
        self.local_plate = local_plate
        self.hidden = tuple(hidden)
        self.inputs = inputs or first_argument
        self.encoder: Encoder | None = None
        self._local: tuple[_LocalSite, ...] = ()

    # ------------------------------------------------------------------ structure
    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        found = dict(self.prototype_trace.iter_stochastic_nodes())
        missing = [s for s in self.sites if s not in found]
        if missing:
            raise ValueError(
                f"local sites {missing} are declared but the model samples no such latent "
                f"(latents found: {sorted(found)})"
            )
        local, start = [], 0
        for name in self.sites:
            local.append(self._plan(name, found[name], start))
            start += local[-1].size
        self._local = tuple(local)
        rows = self._check_rows(self.inputs(*args, **kwargs))
        flat = rows.reshape(rows.shape[0], -1)
        loc = flat.mean(0)
        scale = flat.std(0) if flat.shape[0] > 1 else torch.ones_like(loc)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.register_buffer("input_loc", loc.detach())
        self.register_buffer("input_scale", scale.detach())
        self.encoder = Encoder(flat.shape[1], start, self.hidden).to(flat.dtype)

    def _plan(self, name: str, site: dict, start: int) -> _LocalSite:
        """Where site ``name`` sits in the encoder's output, checked against the declaration."""
        frames = {f.name: f for f in site["cond_indep_stack"]}
        if self.local_plate not in frames:
            raise ValueError(
                f"local site {name!r} is not inside the local plate {self.local_plate!r} "
                f"(its plates: {sorted(frames)})"
            )
        support = site["fn"].support
        if support.is_discrete:
            raise ValueError(
                f"local site {name!r} is discrete ({support}); an encoder amortises "
                "continuous latents only (declare discrete ones as enumerated_sites)"
            )
        transform = biject_to(support)
        value = transform.inv(site["value"])
        event_dim = site["fn"].event_dim + transform.domain.event_dim
        event_dim -= transform.codomain.event_dim
        axis = frames[self.local_plate].dim - event_dim
        shape = list(value.shape)
        del shape[axis]
        size = int(torch.Size(shape).numel())
        plates = tuple(f.name for f in site["cond_indep_stack"])
        return _LocalSite(name, start, size, tuple(shape), axis, event_dim, transform, plates)

    @staticmethod
    def _check_rows(rows: Any) -> torch.Tensor:
        if not isinstance(rows, torch.Tensor) or rows.dim() < 1:
            raise ValueError(
                "the amortized guide's inputs must be a tensor with one row per observation; "
                f"got {type(rows).__name__}"
            )
        return rows

    def _rows(self, plate: pyro.plate, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The observations of the plate's current (sub)sample."""
        rows = self._check_rows(self.inputs(*args, **kwargs))
        with plate as index:
            pass
        if rows.shape[0] == plate.size:
            return rows[index]
        if rows.shape[0] == len(index):
            return rows
        raise ValueError(
            f"the amortized guide's inputs have {rows.shape[0]} rows, but plate "
            f"{self.local_plate!r} has {plate.size} members ({len(index)} in this subsample)"
        )

    # ------------------------------------------------------------------ the guide
    def _posterior(self, rows: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Unconstrained location and scale of each site for ``rows``, plate axis in place."""
        flat = rows.reshape(rows.shape[0], -1)
        loc, log_scale = self.encoder((flat - self.input_loc) / self.input_scale)
        out = {}
        for s in self._local:
            shape = (rows.shape[0], *s.shape)
            part = slice(s.start, s.start + s.size)
            site_loc = loc[:, part].reshape(shape).movedim(0, s.axis)
            site_scale = log_scale[:, part].reshape(shape).movedim(0, s.axis).exp()
            out[s.name] = (site_loc, site_scale)
        return out

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        posterior = self._posterior(self._rows(plates[self.local_plate], *args, **kwargs))
        result = {}
        for s in self._local:
            loc, scale = posterior[s.name]
            fn = dist.TransformedDistribution(
                dist.Normal(loc, scale).to_event(s.event_dim), s.transform
            )
            with ExitStack() as stack:
                for name in s.plates:
                    stack.enter_context(plates[name])
                result[s.name] = pyro.sample(s.name, fn)
        return result

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The encoder's median of each local site for every row of the inputs."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        rows = self._check_rows(self.inputs(*args, **kwargs))
        transforms = {s.name: s.transform for s in self._local}
        return {
            name: transforms[name](loc) for name, (loc, _) in self._posterior(rows).items()
        }


class AmortizedGuide(AutoGuideList):
    """A global guide of any family joined with an :class:`AmortizedNormal` local part.

    The global part covers every latent of ``model`` except the local sites (blocked from it);
    it is built at the first call, once the traced run shows there are global latents at all (a
    VAE's decoder weights are parameters, not latents: then the guide is the encoder alone).

    Parameters
    ----------
    model : callable
        The Pyro model as the guide sees it (enumerated sites already hidden).
    local : AmortizedNormal
        The encoder part.
    global_part : callable
        ``global_part(blocked_model) -> guide``: the global family's builder.
    create_plates : callable, optional
        As Pyro's autoguides: the model's plates, for subsampling with explicit indices.
    """

    def __init__(
        self,
        model: Callable,
        local: AmortizedNormal,
        global_part: Callable[[Callable], Callable],
        *,
        create_plates: Callable | None = None,
    ) -> None:
        super().__init__(model, create_plates=create_plates)
        self._local_part = (local,)  # a tuple: not a submodule until appended
        self._global_part = global_part

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        local = self._local_part[0]
        names = [name for name, _ in self.prototype_trace.iter_stochastic_nodes()]
        if any(name not in local.sites for name in names):
            self.append(self._global_part(poutine.block(self.model, hide=list(local.sites))))
        self.append(local)
