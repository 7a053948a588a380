"""Mixture of multivariate Student-t distributions with fixed degrees of freedom."""

from __future__ import annotations

from collections.abc import Mapping

import pyro.distributions as dist
import torch

from ppl_models.models.mixture import FiniteMixture
from ppl_models.priors import PriorSpec

__all__ = ["StudentTMixture"]


class StudentTMixture(FiniteMixture):
    r"""Mixture of multivariate Student-t components, robust to outliers.

    .. math::

        z_n \sim \mathrm{Categorical}(w), \qquad
        x_n \mid z_n = k \sim t_\nu\!\left(\mu_k,\
            \mathrm{diag}(\sigma_k) L_k L_k^\top \mathrm{diag}(\sigma_k)\right)

    with the same default priors as :class:`~ppl_models.models.GaussianMixture` and the degrees
    of freedom :math:`\nu` fixed (Peel & McLachlan, 2000, "Robust mixture modelling using the
    t distribution", Statistics and Computing). Heavier tails than a Gaussian let a few
    outlying points stay in a component without inflating its covariance.

    The package gives this model no closed-form M-step on purpose: :func:`fit_em` fits it with
    its generic M-step (the expected complete-data log joint maximised numerically with the
    responsibilities held fixed), which is how any enumerable model without one is fitted.

    Parameters
    ----------
    n_components, covariance_type, priors
        As :class:`~ppl_models.models.mixture.FiniteMixture`.
    df : float
        Degrees of freedom :math:`\nu > 0` (4 by default).
    """

    name = "student_t_mixture"

    def __init__(
        self,
        n_components: int,
        covariance_type: str = "full",
        priors: Mapping[str, PriorSpec] | None = None,
        df: float = 4.0,
    ) -> None:
        if not float(df) > 0:
            raise ValueError(f"df must be positive; got {df}")
        super().__init__(n_components, covariance_type, priors)
        self.df = float(df)

    def component_distribution(self, params: Mapping[str, torch.Tensor]) -> dist.Distribution:
        locs = params["locs"]
        df = torch.tensor(self.df, dtype=locs.dtype)
        return dist.MultivariateStudentT(df, locs, self.scale_tril(params))

    def config(self) -> dict:
        return {**super().config(), "df": self.df}
