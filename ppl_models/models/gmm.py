"""Gaussian mixture with an enumerated label and closed-form EM hooks."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pyro.distributions as dist
import torch

from ppl_models.models.mixture import FiniteMixture, weighted_moments
from ppl_models.models.protocols import ClosedFormEM

__all__ = ["GaussianMixture"]

#: Largest ``eps * max_n ||x_n - centre||^2 * lambda_max(Sigma_k^{-1})`` (``eps`` the machine
#: epsilon of the data) for which the fast EM iterations expand the quadratic form: the
#: round-off of the expansion, per observation, is of this order. It allows spreads of 1e5
#: in float64 (Old Faithful: ~1.5e4); float32 always takes the exact path.
_CANCELLATION_LIMIT = 1e5 * torch.finfo(torch.float64).eps

#: Size (elements) up to which the fast EM iterations' ``(N, F)`` feature matrix is always
#: built; beyond it only if no larger than twice the exact path's ``(K, N, D)`` temporaries
#: (so large full-covariance problems with D above ~4K use the exact path).
_MAX_FEATURES = 1 << 25


def _exp_(t: torch.Tensor) -> torch.Tensor:
    """``t.exp_()``; through NumPy for a CPU tensor, whose vectorised ``exp`` is about twice as
    fast as torch's here (float64; the same values to the last unit or so)."""
    if t.device.type == "cpu" and not t.requires_grad:
        array = t.numpy()
        np.exp(array, out=array)
        return t
    return t.exp_()


#: Key under which :meth:`GaussianMixture.em_start_from_labels` leaves the precision factors
#: it computed (and found well conditioned) in its state, for the first E-step.
_CHECKED_FACTORS = "_checked_precision_factors"


@functools.cache
def _symmetric_index(d: int) -> torch.Tensor:
    """``(d * d,)`` position, among the upper-triangle features of :func:`_upper_triangle`,
    of each entry ``(i, j)`` of a symmetric ``(d, d)`` matrix (row-major)."""
    rows, cols = torch.triu_indices(d, d)
    index = torch.empty(d, d, dtype=torch.long)
    position = torch.arange(rows.shape[0])
    index[rows, cols] = position
    index[cols, rows] = position
    return index.flatten()


@functools.cache
def _upper_triangle(d: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row and column indices of the upper triangle of a ``(d, d)`` matrix (the order of the
    quadratic features), and the quadratic form's coefficient of each: -1/2 on the diagonal,
    -1 off it (each off-diagonal pair appears once)."""
    rows, cols = torch.triu_indices(d, d)
    return rows, cols, torch.where(rows == cols, -0.5, -1.0).to(dtype)


class EMData(NamedTuple):
    """Data prepared once per fit for :meth:`GaussianMixture.em_iteration`.

    ``features`` is ``None`` when the fast iterations would take much more memory than the
    exact ones (every iteration then takes the exact path).
    """

    data: torch.Tensor
    centre: torch.Tensor
    features: torch.Tensor | None  # (N, F): [quadratic terms, x - centre, 1]
    n_quad: int
    max_sq_norm: float

    def centred(self) -> torch.Tensor:
        """``(N, D)`` data minus ``centre``: a view of the features' linear columns (which
        must exist)."""
        assert self.features is not None
        return self.features[:, self.n_quad : self.n_quad + self.data.shape[1]]


class GaussianMixture(FiniteMixture, ClosedFormEM):
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
        """``(N, K)`` log densities, computed as scikit-learn does (centred per component)."""
        means, cov = state["locs"], state["covariances"]
        n, d = x.shape
        k = means.shape[0]
        const = -0.5 * d * math.log(2 * math.pi)
        if self.covariance_type == "full":
            chol = torch.linalg.cholesky(cov)
            eye = torch.eye(d, dtype=x.dtype).expand_as(chol)
            prec_chol = torch.linalg.solve_triangular(chol, eye, upper=False).mT  # (K, D, D)
            # One (N, D) @ (D, K*D) product instead of K batched ones; y[n, k] = (x_n - mu_k) P_k.
            y = x @ prec_chol.permute(1, 0, 2).reshape(d, k * d)
            y = y - (means.unsqueeze(1) @ prec_chol).reshape(k * d)
            maha = y.square().view(n, k, d).sum(-1)
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

    # ------------------------------------------------------------------ fast EM iterations
    # fit_em calls em_prepare once, then em_iteration and em_log_likelihood: the data are
    # centred once and expanded into quadratic features phi(x) = [x_i x_j (i <= j), x, 1]
    # (squares only for diag/spherical), so that an E-step is one (K, F) @ (F, N) product and
    # an M-step one (K, N) @ (N, F) product of responsibility-weighted moments, with no
    # (K, N, D) tensor. Expanding the quadratic form costs accuracy when
    # ||x - centre||^2 / lambda_min(Sigma_k) is large (cancellation); beyond
    # _CANCELLATION_LIMIT an iteration falls back to the exact, per-component-centred
    # e_step/m_step above.

    def em_prepare(self, data: torch.Tensor) -> EMData:
        """Centred data and their quadratic features, computed once per fit (no features when
        they would take much more memory than the exact path's temporaries)."""
        n, d = data.shape
        n_quad = d * (d + 1) // 2 if self.covariance_type == "full" else d
        with torch.no_grad():
            centre = data.mean(0)
            # Built feature by feature as rows of an (F, N) array (contiguous writes), and
            # returned as its (N, F) transpose: the products with it are as fast either way.
            if n * (n_quad + d + 1) > max(2 * n * self.n_components * d, _MAX_FEATURES):
                xt = torch.sub(data.T, centre.unsqueeze(1), out=torch.empty(d, n, dtype=data.dtype))
                return EMData(data, centre, None, n_quad, float(xt.square().sum(0).max()))
            rows = torch.empty(n_quad + d + 1, n, dtype=data.dtype)
            # the linear features x - centre, written in place
            xt = torch.sub(data.T, centre.unsqueeze(1), out=rows[n_quad : n_quad + d])
            max_sq = float(xt.square().sum(0).max())
            if self.covariance_type == "full":
                col = 0
                for i in range(d):
                    torch.mul(xt[i : i + 1], xt[i:], out=rows[col : col + d - i])
                    col += d - i
            else:
                torch.square(xt, out=rows[:d])
            rows[-1] = 1.0
            features = rows.T
        return EMData(data, centre, features, n_quad, max_sq)

    def _em_precisions(self, state: Mapping[str, torch.Tensor], centre: torch.Tensor):
        """Precision matrices (compact for diag/spherical), log-determinants, centred means,
        and an upper bound of each component's largest precision eigenvalue."""
        cov, means = state["covariances"], state["locs"] - centre
        d = means.shape[1]
        if self.covariance_type == "full":
            chol = torch.linalg.cholesky(cov)
            prec = torch.cholesky_inverse(chol)  # (L L^T)^{-1} in one LAPACK call
            log_det = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
            largest = torch.diagonal(prec, dim1=-2, dim2=-1).sum(-1)  # trace >= lambda_max
        else:
            prec = cov.reciprocal()
            if self.covariance_type == "diag":
                log_det = 0.5 * cov.log().sum(1)
                largest = prec.amax(1)
            else:
                log_det = 0.5 * d * cov.log()
                largest = prec
                prec = prec.unsqueeze(1).expand(-1, d)
        return prec, log_det, means, largest

    def _em_well_conditioned(self, prep: EMData, means_c: torch.Tensor, largest) -> bool:
        spread = max(prep.max_sq_norm, float(means_c.square().sum(1).max()))
        eps = torch.finfo(means_c.dtype).eps
        return eps * spread * float(largest.max()) <= _CANCELLATION_LIMIT

    def _em_weights(self, state, prec, log_det, means_c) -> torch.Tensor:
        """``(K, F)`` coefficients, ``W @ features.T = log w_k + log N(x_n | mu_k, Sigma_k)``."""
        d = means_c.shape[1]
        if self.covariance_type == "full":
            lin = (prec @ means_c.unsqueeze(-1)).squeeze(-1)  # (K, D)
            rows, cols, half = _upper_triangle(d, prec.dtype)
            quad = prec[:, rows, cols] * half
        else:
            lin = prec * means_c
            quad = -0.5 * prec
        const = (
            state["weights"].log()
            - 0.5 * d * math.log(2 * math.pi)
            - log_det
            - 0.5 * (lin * means_c).sum(1)
        )
        return torch.cat([quad, lin, const.unsqueeze(1)], 1)

    def _fast_log_likelihood(self, prep: EMData, state, *, resp: bool = True):
        """Total log-likelihood of the data under ``state`` and (optionally) the transposed
        responsibilities ``(K, N)``; ``None`` when the exact path is needed."""
        if prep.features is None:
            return None
        checked = state.get(_CHECKED_FACTORS)  # a start state's, already found conditioned
        if checked is not None:
            prec, log_det, means_c, _ = checked
        else:
            prec, log_det, means_c, largest = self._em_precisions(state, prep.centre)
            if not self._em_well_conditioned(prep, means_c, largest):
                return None
        # (K, N) layout: the reductions over components run along contiguous rows.
        log_joint = self._em_weights(state, prec, log_det, means_c) @ prep.features.T
        top = log_joint.amax(0)
        expd = _exp_(log_joint.sub_(top))
        total = expd.sum(0)
        ll = float(total.log().add_(top).sum())
        if not math.isfinite(ll):  # an observation with no finite density: the exact path
            return None
        return ll, (expd.div_(total) if resp else None)

    def em_iteration(
        self, prepared: EMData, state: Mapping[str, torch.Tensor], reg_covar: float
    ) -> tuple[float, dict[str, torch.Tensor]]:
        """One EM iteration: the log-likelihood at ``state`` and the M-step's new state."""
        prep = prepared
        with torch.no_grad():
            fast = self._fast_log_likelihood(prep, state)
            if fast is None:  # ill-conditioned for the expanded form: exact E- and M-step
                log_resp, log_norm = self.e_step(prep.data, state)
                return float(log_norm.sum()), self.m_step(
                    prep.data, log_resp.exp_(), reg_covar=reg_covar
                )
            ll, resp_t = fast
            return ll, self._em_m_step(prep, resp_t, reg_covar)

    def em_log_likelihood(self, prepared: EMData, state: Mapping[str, torch.Tensor]) -> float:
        """Total log-likelihood of the prepared data at ``state`` (labels summed out)."""
        with torch.no_grad():
            fast = self._fast_log_likelihood(prepared, state, resp=False)
            if fast is None:
                return float(self.e_step(prepared.data, state)[1].sum())
            return fast[0]

    def _em_m_step(self, prep: EMData, resp_t: torch.Tensor, reg_covar: float):
        """:meth:`m_step` from the moments ``resp.T @ features`` (same algebra, centred data);
        ``resp_t`` is the ``(K, N)`` transpose of the responsibilities."""
        return self._em_state_from_moments(prep, resp_t @ prep.features, reg_covar)

    def em_start_from_labels(
        self, prepared: EMData, labels: torch.Tensor, reg_covar: float | torch.Tensor
    ) -> dict[str, torch.Tensor] | None:
        r"""The M-step from hard responsibilities (point :math:`n` wholly in component
        ``labels[n]``, e.g. k-means clusters), as a moment-form state.

        Each cluster's count, mean and covariance (:math:`w_k = N_k / N`, :math:`\mu_k`,
        :math:`\Sigma_k = S_k / N_k + \operatorname{diag}(\epsilon)`) come from one sum of the
        prepared quadratic features per cluster, without an ``(N, K)`` responsibility matrix.

        Returns
        -------
        dict or None
            ``None`` where this shortcut does not apply and the caller should compute the
            clusters' moments directly: no prepared features, an empty cluster, or clusters too
            narrow for the expanded quadratic form (the criterion of the fast iterations).
        """
        if prepared.features is None:
            return None
        features = prepared.features
        with torch.no_grad():
            one_hot = torch.zeros(self.n_components, features.shape[0], dtype=features.dtype)
            moments = one_hot.scatter_(0, labels.unsqueeze(0), 1.0) @ features  # (K, F)
            if bool((moments[:, -1] == 0).any()):
                return None
            state = self._em_state_from_moments(prepared, moments, reg_covar)
            try:
                factors = self._em_precisions(state, prepared.centre)
            except torch.linalg.LinAlgError:
                return None
            if not self._em_well_conditioned(prepared, factors[2], factors[3]):
                return None
        # Kept for the first E-step (which would compute and check them again); the key is
        # read nowhere else, the state's moments are not changed after this.
        return {**state, _CHECKED_FACTORS: factors}

    def _em_state_from_moments(self, prep: EMData, moments: torch.Tensor, reg_covar):
        """The M-step's state from the ``(K, F)`` responsibility-weighted feature sums."""
        n, d = prep.data.shape
        raw = moments[:, -1]  # sum_n r_nk
        nk = raw + 10 * torch.finfo(moments.dtype).eps
        first = moments[:, prep.n_quad : prep.n_quad + d]  # sum_n r_nk (x_n - c)
        # mu_k = sum_n r_nk x_n / N_k, as scikit-learn (with the 10 eps in N_k).
        means = (first + raw.unsqueeze(1) * prep.centre) / nk.unsqueeze(1)
        shift = means - prep.centre  # mu_k - c
        # sum_n r (x - mu)(x - mu)^T = S2 - S1 m^T - m S1^T + R m m^T (x, m centred at c)
        if self.covariance_type == "full":
            second = moments[:, _symmetric_index(d)].view(-1, d, d)  # one gather
            cross = first.unsqueeze(-1) * shift.unsqueeze(-2)
            outer = raw[:, None, None] * shift.unsqueeze(-1) * shift.unsqueeze(-2)
            cov = (second - cross - cross.mT + outer) / nk[:, None, None]
            # + reg_covar on the diagonal (the same sums as adding reg_covar * I)
            cov.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
        else:
            second = moments[:, :d]
            cov = second - 2 * first * shift + raw.unsqueeze(1) * shift.square()
            cov = cov / nk.unsqueeze(1) + reg_covar
            if self.covariance_type == "spherical":
                cov = cov.mean(1)
        return {"weights": nk / n, "locs": means, "covariances": cov}
