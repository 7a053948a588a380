"""The Laplace approximation, refused where the Hessian says the point is not a mode."""

from __future__ import annotations

from typing import Any

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoLaplaceApproximation, AutoMultivariateNormal
from pyro.ops.hessian import hessian

__all__ = ["LaplaceApproximation"]


class LaplaceApproximation(AutoLaplaceApproximation):
    r"""Pyro's ``AutoLaplaceApproximation`` with a checked Hessian.

    Trained as a point mass (MAP in the unconstrained space :math:`u`), then
    :meth:`laplace_approximation` returns the Gaussian

    .. math::

        q(u) = \mathcal N\!\left(\hat u,\ H^{-1}\right), \qquad
        H = -\nabla^2_u \left[\log p(x, T(u)) + \log\lvert\det J_T(u)\rvert\right]_{u=\hat u}

    (Tierney & Kadane, 1986, "Accurate approximations for posterior moments and marginal
    densities", JASA; MacKay, 2003, ch. 27). ``self.model`` must have an exact log density: for
    a model with enumerated sites it is the model's ``marginal_model`` (see
    :func:`guides.structure.guide_visible_model`).

    Unlike Pyro's, :math:`H` is checked to be positive definite first: if it is not, the point
    reached is not a mode and there is no Gaussian to return, which is reported with the
    smallest eigenvalue instead of a bare Cholesky failure. The covariance is
    :math:`H^{-1}` from the Cholesky factor of :math:`H` (no explicit inverse).
    """

    def negative_log_density_hessian(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        r""":math:`H` at the guide's current point, ``(latent_dim, latent_dim)``."""
        guide_trace = poutine.trace(self).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        # The guide's Delta sites carry -log|det J| as their log density.
        loss = guide_trace.log_prob_sum() - model_trace.log_prob_sum()
        return hessian(loss, self.loc)

    def laplace_approximation(self, *args: Any, **kwargs: Any) -> AutoMultivariateNormal:
        """The Gaussian at the trained point, an ``AutoMultivariateNormal`` with fixed buffers.

        Raises
        ------
        torch.linalg.LinAlgError
            When the Hessian is not positive definite (the optimisation has not reached a
            mode), naming its smallest eigenvalue.
        """
        hess = self.negative_log_density_hessian(*args, **kwargs).detach()
        with torch.no_grad():
            hess = 0.5 * (hess + hess.mT)
            chol, info = torch.linalg.cholesky_ex(hess)
            if int(info) != 0 or not bool(torch.isfinite(hess).all()):
                finite = bool(torch.isfinite(hess).all())
                smallest = float(torch.linalg.eigvalsh(hess)[0]) if finite else float("nan")
                raise torch.linalg.LinAlgError(
                    "the Laplace approximation needs a mode, but the Hessian of the negative "
                    f"log posterior at the trained point is not positive definite (smallest "
                    f"eigenvalue {smallest}): train longer, lower the learning rate, or start "
                    "closer to a mode (e.g. init='em')"
                )
            cov = torch.cholesky_inverse(chol)
            scale = cov.diagonal().sqrt()
            corr = cov / (scale[:, None] * scale[None, :])
            scale_tril = torch.linalg.cholesky(corr)
            loc = self.loc.detach()

        gaussian = AutoMultivariateNormal(self.model)
        gaussian._setup_prototype(*args, **kwargs)
        del gaussian.loc
        del gaussian.scale
        del gaussian.scale_tril
        gaussian.register_buffer("loc", loc)
        gaussian.register_buffer("scale", scale)
        gaussian.register_buffer("scale_tril", scale_tril)
        return gaussian
