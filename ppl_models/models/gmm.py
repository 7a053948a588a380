"""Gaussian mixture with an enumerated label and closed-form EM hooks."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro.distributions as dist
import torch

from ppl_models.models.mixture import FiniteMixture, weighted_moments

__all__ = ["GaussianMixture"]


class GaussianMixture(FiniteMixture):
    r"""Gaussian mixture model with the cluster label summed out exactly.

    .. math::

        w &\sim \mathrm{Dirichlet}(\mathbf 1_K) \\
        \mu_{kd} &\sim \mathcal N(\bar x_d,\ (3 s_d)^2) \\
        \sigma_{kd} &\sim \mathrm{Gamma}(2,\ 2 / s_d)
            \quad (\text{mean } s_d\text{, zero density at } 0) \\
        L_k &\sim \mathrm{LKJCholesky}(D,\ \eta = 2)  \quad (\texttt{full} \text{ only}) \\
        z_n &\sim \mathrm{Categorical}(w) \\
        x_n \mid z_n = k &\sim \mathcal N\!\left(\mu_k,\
            \mathrm{diag}(\sigma_k) L_k L_k^\top \mathrm{diag}(\sigma_k)\right)

    where :math:`\bar x_d` and :math:`s_d` are the mean and standard deviation of feature
    :math:`d` (0 and 1 when the model simulates without data). These defaults are weakly
    informative on the data's own scale: the locations range over the data with room to spare,
    the Gamma(2) scale prior keeps modal estimates away from the zero-variance singularity
    (Chung et al., 2013, "A nondegenerate penalized likelihood estimator for variance
    parameters in multilevel models", Psychometrika), and LKJ(2) mildly favours weak
    correlations (Lewandowski, Kurowicka & Joe, 2009). ``diag`` drops :math:`L_k`;
    ``spherical`` uses one :math:`\sigma_k` for every feature. With ``K = 1`` the weights are
    fixed at 1.

    Any of these priors can be replaced through ``priors`` (see :class:`FiniteMixture`), e.g.
    ``priors={"weights": stick_breaking_prior(0.5, K), "corr_chol": dist.LKJCholesky(D, 4.)}``.

    Closed-form EM (Dempster, Laird & Rubin, 1977; Bishop, PRML §9.2) is provided through
    :meth:`e_step` and :meth:`m_step` for maximum likelihood; MAP (the priors above have no
    closed-form mode) and fixed sites use the generic M-step of
    :func:`ppl_models.infer.fit_em`.
    Covariance conventions (``reg_covar`` added to the diagonal, compact ``diag``/``spherical``
    forms) follow scikit-learn's ``GaussianMixture`` so that results can be compared.
    """

    name = "gmm"

    def component_distribution(self, params: Mapping[str, torch.Tensor]) -> dist.Distribution:
        locs = params["locs"]
        if self.covariance_type == "full" and locs.shape[-1] > 1:
            return dist.MultivariateNormal(locs, scale_tril=self.scale_tril(params))
        scale = params["scale"]
        if self.covariance_type == "spherical":
            scale = scale.unsqueeze(-1)
        return dist.Normal(locs, scale.expand(locs.shape)).to_event(1)

    # ------------------------------------------------------------------ closed-form EM
    def closed_form_unavailable(self, objective: str) -> str | None:
        """Why the closed-form M-step cannot serve ``objective`` here (``None`` if it can).

        Only maximum likelihood has a closed form: the scale (Gamma/any) and LKJ correlation
        priors of the MAP objective have no closed-form mode, so MAP uses the generic M-step.
        """
        fixed = sorted(n for n, v in self.priors.items() if isinstance(v, torch.Tensor))
        if fixed:
            return f"sites {fixed} are fixed"
        if objective != "ml":
            return "the MAP objective's scale and correlation priors have no closed-form mode"
        return None

    def em_state(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Moment form ``{weights, locs, covariances}`` (scikit-learn's shapes) of site values."""
        d = params["locs"].shape[-1]
        params = self.full_params(params, d)
        cov = self.covariances(params)
        if self.covariance_type == "diag":
            cov = torch.diagonal(cov, dim1=-2, dim2=-1)
        elif self.covariance_type == "spherical":
            cov = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)
        return {"weights": params["weights"], "locs": params["locs"], "covariances": cov}

    def em_params(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Site values of a moment-form state."""
        return self.site_params_from_moments(state["weights"], state["locs"], state["covariances"])

    def e_step(
        self, data: torch.Tensor, state: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Exact E-step.

        Returns
        -------
        log_resp : Tensor (N, K)
            :math:`\log p(z_n = k \mid x_n, \theta)`.
        log_norm : Tensor (N,)
            :math:`\log p(x_n \mid \theta)`, the label summed out.
        """
        log_joint = self._log_gaussian(data, state) + state["weights"].log()
        log_norm = torch.logsumexp(log_joint, dim=1)
        return log_joint - log_norm.unsqueeze(1), log_norm

    def _log_gaussian(self, x: torch.Tensor, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        means, cov = state["locs"], state["covariances"]
        d = x.shape[1]
        const = -0.5 * d * math.log(2 * math.pi)
        if self.covariance_type == "full":
            chol = torch.linalg.cholesky(cov)
            eye = torch.eye(d, dtype=x.dtype).expand_as(chol)
            prec_chol = torch.linalg.solve_triangular(chol, eye, upper=False).mT
            y = x @ prec_chol - (means.unsqueeze(1) @ prec_chol)  # (K, N, D)
            maha = y.square().sum(-1).T
            log_det = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
            return const - log_det - 0.5 * maha
        if self.covariance_type == "diag":
            prec = cov.reciprocal()
            maha = (
                (means.square() * prec).sum(1)
                - 2.0 * x @ (means * prec).T
                + x.square() @ prec.T
            )
            return const - 0.5 * cov.log().sum(1) - 0.5 * maha
        prec = cov.reciprocal()
        maha = (
            (means.square().sum(1) * prec)
            - 2.0 * (x @ means.T) * prec
            + x.square().sum(1, keepdim=True) * prec
        )
        return const - 0.5 * d * cov.log() - 0.5 * maha

    def m_step(
        self, data: torch.Tensor, resp: torch.Tensor, *, reg_covar: float
    ) -> dict[str, torch.Tensor]:
        r"""Closed-form maximum-likelihood M-step from responsibilities ``resp`` (N, K).

        :math:`N_k = \sum_n r_{nk}`, :math:`w_k = N_k / N`,
        :math:`\mu_k = \sum_n r_{nk} x_n / N_k`,
        :math:`\Sigma_k = \sum_n r_{nk} (x_n - \mu_k)(x_n - \mu_k)^\top / N_k + \epsilon I`
        (compact forms for ``diag`` and ``spherical``, as scikit-learn).
        """
        if self.covariance_type == "full":
            nk, means, cov = weighted_moments(data, resp, reg_covar)
        else:
            nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
            means = resp.T @ data / nk.unsqueeze(1)
            avg_x2 = resp.T @ data.square() / nk.unsqueeze(1)
            avg_xm = means * (resp.T @ data) / nk.unsqueeze(1)
            cov = avg_x2 - 2 * avg_xm + means.square() + reg_covar
            if self.covariance_type == "spherical":
                cov = cov.mean(1)
        return {"weights": nk / data.shape[0], "locs": means, "covariances": cov}

    def degenerate_components(
        self, state: Mapping[str, torch.Tensor], reg_covar: float, n_obs: int
    ) -> list[int]:
        """Components whose variance collapsed onto ``reg_covar`` (or that hold < 1 point)."""
        cov = state["covariances"]
        if self.covariance_type == "full":
            smallest = torch.linalg.eigvalsh(cov)[:, 0]
        elif self.covariance_type == "diag":
            smallest = cov.min(1).values
        else:
            smallest = cov
        held = smallest <= 10 * reg_covar if reg_covar > 0 else smallest <= 0
        empty = state["weights"] * n_obs < 1.0
        return [int(i) for i in torch.nonzero(held | empty).flatten()]
