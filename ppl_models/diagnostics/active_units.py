r"""Active units of a VAE: the latent dimensions its encoder actually uses.

A latent dimension :math:`u` is *active* when the encoder's mean moves with the input,

.. math::

    A_u = \mathrm{Var}_{x}\big(\mathbb E_{q_\phi(z \mid x)}[z_u]\big) > \delta,
    \qquad \delta = 10^{-2},

(Burda, Grosse & Salakhutdinov, 2016, "Importance weighted autoencoders", ICLR, §5.2). An
inactive dimension has collapsed onto the prior (posterior collapse): its KL term is near zero
and the decoder ignores it. A VAE with fewer than two active units encodes (almost) nothing of
its inputs, whatever its ELBO says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ACTIVE_THRESHOLD", "MIN_ACTIVE_UNITS", "ActiveUnits", "active_units"]

#: Burda et al.'s threshold on the variance of the encoder mean.
ACTIVE_THRESHOLD = 1e-2
#: Below this many active units a fit is reported as collapsed.
MIN_ACTIVE_UNITS = 2


@dataclass(frozen=True)
class ActiveUnits:
    """How many latent dimensions are active, and the statistic behind it.

    Attributes
    ----------
    count : int
        Dimensions with ``variances > threshold``.
    variances : ndarray (L,)
        :math:`\\mathrm{Var}_x(\\mathbb E_q[z_u \\mid x])` per latent dimension.
    threshold : float
    """

    count: int
    variances: np.ndarray
    threshold: float

    @property
    def n_latent(self) -> int:
        return int(self.variances.shape[0])

    def warning(self, minimum: int = MIN_ACTIVE_UNITS) -> str | None:
        """A one-line warning when fewer than ``minimum`` units are active (else None)."""
        if self.count >= minimum:
            return None
        return (
            f"only {self.count} of {self.n_latent} latent dimensions are active (variance of "
            f"the encoder mean above {self.threshold:g}): the codes have collapsed onto the "
            "prior; try KL warm-up, a smaller learning rate or a weaker decoder"
        )


def active_units(
    codes: torch.Tensor | np.ndarray, threshold: float = ACTIVE_THRESHOLD
) -> ActiveUnits:
    """Count the active units from the encoder means of a set of inputs.

    Parameters
    ----------
    codes : array (N, L)
        :math:`\\mathbb E_{q_\\phi(z \\mid x_n)}[z]` for N inputs (a VAE's ``code_mean(x)``),
        N >= 2.
    threshold : float
        :math:`\\delta`.

    Returns
    -------
    ActiveUnits
    """
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[0] < 2:
        raise ValueError(f"codes must have shape (N, L) with N >= 2; got {codes.shape}")
    if not np.all(np.isfinite(codes)):
        raise ValueError("codes hold NaN or infinite values")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive; got {threshold}")
    variances = codes.var(axis=0, ddof=1)
    return ActiveUnits(int((variances > threshold).sum()), variances, float(threshold))
