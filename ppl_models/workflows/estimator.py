r"""A scikit-learn estimator around the collection's Gaussian mixture, fitted by EM, SVI or NUTS.

:class:`GaussianMixture` speaks scikit-learn's vocabulary (``fit``, ``predict``,
``predict_proba``, ``score``, ``score_samples``, ``bic``, ``aic``, ``sample``, fitted
attributes with a trailing underscore), so the model works in a ``Pipeline``, in
``GridSearchCV`` and wherever ``sklearn.mixture.GaussianMixture`` does, while the fit is one of
this package's drivers: :func:`~ppl_models.infer.fit_em`,
:func:`~ppl_models.infer.fit_svi` or :func:`~ppl_models.infer.fit_mcmc`.

Layer: workflows. It fits (``infer``) and reads the fit (``diagnostics``); nothing below
imports it. Import it as ``from ppl_models.sklearn import GaussianMixture``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from ppl_models._shared.checks import check_choice, check_float, check_int
from ppl_models.diagnostics.memberships import (
    membership_probabilities,
    relabelled_point_and_draws,
)
from ppl_models.infer import fit_em, fit_mcmc, fit_svi
from ppl_models.infer.regularisation import REG_COVAR_MODES, reg_covar_per_feature
from ppl_models.models import GaussianMixture as MixtureModel
from ppl_models.models.mixture import COVARIANCE_TYPES

__all__ = ["GaussianMixture"]

METHODS = ("em", "svi", "nuts")
INIT_PARAMS = ("kmeans", "kmeans++", "random")

#: The settings each method reads (the others are shared).
_METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "em": ("tol", "reg_covar", "reg_covar_mode", "max_iter", "n_init", "init_params"),
    "svi": ("guide", "num_steps", "num_draws"),
    "nuts": ("num_samples", "warmup_steps", "num_chains"),
}

#: Largest ``N * draws * K * D`` evaluated at once for the predictive density (elements).
_CHUNK_ELEMENTS = 1 << 24


class GaussianMixture(DensityMixin, BaseEstimator):
    r"""Gaussian mixture with scikit-learn's interface, fitted by EM, SVI or NUTS.

    .. math::

        p(x) = \sum_{k=1}^K w_k\, \mathcal N(x \mid \mu_k, \Sigma_k)

    ``method="em"`` is maximum likelihood by expectation-maximisation (Dempster, Laird &
    Rubin, 1977), the same estimator as :class:`sklearn.mixture.GaussianMixture` (from the
    same start it reaches the same optimum). ``method="svi"`` and ``method="nuts"`` are
    Bayesian, under the weakly informative priors of
    :class:`ppl_models.models.GaussianMixture`: a variational posterior (Pyro's
    ``TraceEnum_ELBO``, labels summed out) or NUTS draws of the posterior. Their draws are put
    under one labelling (:func:`~ppl_models.diagnostics.relabel.relabel_result`) before
    anything is averaged over them.

    Settings are stored as given and validated by :meth:`fit`. A setting that the chosen
    ``method`` does not read is reported by a ``UserWarning`` when it differs from its default.

    Parameters
    ----------
    n_components : int, default 1
    covariance_type : {"full", "diag", "spherical"}, default "full"
        As scikit-learn (``tied`` is not offered).
    method : {"em", "svi", "nuts"}, default "em"
    tol : float, default 1e-3
        EM: stop when the mean log-likelihood per observation changes by less than ``tol``.
    reg_covar : float, default 1e-6
        EM: added to every covariance diagonal (times each feature's variance when
        ``reg_covar_mode="relative"``).
    reg_covar_mode : {"absolute", "relative"}, default "absolute"
        EM: ``absolute`` is scikit-learn's meaning of ``reg_covar`` (this class keeps its
        vocabulary and semantics); ``relative``, :func:`~ppl_models.infer.fit_em`'s default,
        makes the fit the same in any units of the data.
    max_iter : int, default 100
        EM iterations per start.
    n_init : int, default 1
        EM starts; the best is kept.
    init_params : {"kmeans", "kmeans++", "random"}, default "kmeans"
        EM: how starts are drawn (k-means as scikit-learn's default, k-means++ seeds alone,
        or random responsibilities).
    weights_init, means_init, precisions_init : array-like, optional
        A starting point in scikit-learn's shapes (``precisions_init``: ``(K, D, D)``,
        ``(K, D)`` or ``(K,)`` by ``covariance_type``), used by every method (EM's first start;
        SVI's guide and NUTS's chains start there). With ``means_init`` alone (or without
        some of the others), the missing weights and covariances are the moments of the
        observations nearest each given mean. Without ``means_init``, the others are refused.
    guide : str, default "mean_field"
        SVI: a guide kind of :func:`guides.build` (``"mean_field"``, ``"full_rank"``, ...).
    num_steps : int, default 2000
        SVI optimisation steps.
    num_draws : int, default 1000
        SVI: guide draws kept (memberships and densities are averaged over them).
    num_samples, warmup_steps, num_chains : int, default 500, 500, 2
        NUTS: draws kept per chain, warm-up steps per chain, chains.
    random_state : int, RandomState instance or None, default None
        Seeds the fit (and :meth:`sample`). The drivers reseed Pyro's, PyTorch's and NumPy's
        global generators from it.

    Attributes
    ----------
    weights_ : ndarray (K,)
    means_ : ndarray (K, D)
    covariances_ : ndarray
        ``(K, D, D)``, ``(K, D)`` or ``(K,)`` by ``covariance_type``.
    precisions_ : ndarray
        Inverses of ``covariances_``, same shapes.
        For SVI and NUTS these four are posterior means over the relabelled draws (the guide's
        median for a ``map`` guide); for EM the optimum. Components are in the canonical order
        of :func:`~ppl_models.diagnostics.relabel.relabel_result` (sorted by the first feature
        of the location), the order of the columns of :meth:`predict_proba`.
    converged_ : bool
        The driver's rule: EM's tolerance, SVI's ELBO plateau, NUTS's split R-hat < 1.05.
    n_iter_ : int
        EM iterations, SVI steps, or NUTS draws per chain.
    lower_bound_ : float
        EM: mean log-likelihood per observation at the optimum; SVI: the ELBO per observation
        (mean over the last window of steps); NUTS: ``nan`` (a sampler has no bound).
    result_ : FitResult
        The driver's record (the SVI guide object dropped, so the estimator pickles).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        When fitted on a DataFrame with string column names.

    Notes
    -----
    :meth:`score_samples` is :math:`\log p(x \mid \hat\theta)` for EM and the log posterior
    predictive density :math:`\log \frac1S \sum_s p(x \mid \theta_s)` for SVI and NUTS;
    :meth:`bic` and :meth:`aic` use the log-likelihood at the point estimate (the attributes
    above) for every method, with scikit-learn's parameter count.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from ppl_models.sklearn import GaussianMixture
    >>> pipe = make_pipeline(StandardScaler(), GaussianMixture(2, random_state=0))  # doctest: +SKIP
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        method: str = "em",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        reg_covar_mode: str = "absolute",
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        guide: str = "mean_field",
        num_steps: int = 2000,
        num_draws: int = 1000,
        num_samples: int = 500,
        warmup_steps: int = 500,
        num_chains: int = 2,
        random_state: Any = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.method = method
        self.tol = tol
        self.reg_covar = reg_covar
        self.reg_covar_mode = reg_covar_mode
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.guide = guide
        self.num_steps = num_steps
        self.num_draws = num_draws
        self.num_samples = num_samples
        self.warmup_steps = warmup_steps
        self.num_chains = num_chains
        self.random_state = random_state

    # ------------------------------------------------------------------ validation
    def _check_settings(self) -> None:
        check_int(self.n_components, "n_components")
        check_choice(self.covariance_type, "covariance_type", COVARIANCE_TYPES)
        check_choice(self.method, "method", METHODS)
        for name in ("tol", "reg_covar"):
            check_float(getattr(self, name), name, minimum=0)
        for name, low in (
            ("max_iter", 1), ("n_init", 1), ("num_steps", 1), ("num_draws", 0),
            ("num_samples", 1), ("warmup_steps", 0), ("num_chains", 1),
        ):
            check_int(getattr(self, name), name, minimum=low)
        check_choice(self.init_params, "init_params", INIT_PARAMS)
        check_choice(self.reg_covar_mode, "reg_covar_mode", REG_COVAR_MODES)
        if not isinstance(self.guide, str):
            raise ValueError(f"guide must be the name of a guide kind; got {self.guide!r}")
        defaults = type(self)().get_params()
        for method, names in _METHOD_SETTINGS.items():
            if method == self.method:
                continue
            for name in names:
                if getattr(self, name) != defaults[name]:
                    warnings.warn(
                        f"{name}={getattr(self, name)!r} is read only by method='{method}'; "
                        f"it is ignored with method='{self.method}'",
                        UserWarning,
                        stacklevel=3,
                    )

    def _initial_state(self, x: np.ndarray) -> dict[str, torch.Tensor] | None:
        """The user's start in moment form ``{weights, locs, covariances}``, or None."""
        given = {
            "weights_init": self.weights_init,
            "means_init": self.means_init,
            "precisions_init": self.precisions_init,
        }
        if all(v is None for v in given.values()):
            return None
        if self.means_init is None:
            named = sorted(k for k, v in given.items() if v is not None)
            raise ValueError(f"{', '.join(named)} needs means_init as well")
        k, d = self.n_components, x.shape[1]
        means = _array("means_init", self.means_init, (k, d))
        nearest = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        resp = np.eye(k)[nearest]
        nk = resp.sum(0) + 10 * np.finfo(float).eps
        if self.weights_init is None:
            weights = nk / nk.sum()
        else:
            weights = _array("weights_init", self.weights_init, (k,))
            if np.any(weights <= 0) or not np.isclose(weights.sum(), 1.0):
                raise ValueError("weights_init must be positive and sum to one")
        if self.precisions_init is None:
            diff = x[None] - means[:, None]  # (K, N, D)
            cov = np.einsum("kn,kni,knj->kij", resp.T, diff, diff) / nk[:, None, None]
            reg = reg_covar_per_feature(
                torch.as_tensor(x), self.reg_covar, self.reg_covar_mode
            ).numpy()
            cov += np.diag(reg)
            # a component with no nearest observation borrows the data's spread
            empty = resp.sum(0) == 0
            cov[empty] = np.atleast_2d(np.cov(x.T, bias=True)) + np.diag(reg)
            if self.covariance_type == "diag":
                cov = np.diagonal(cov, axis1=1, axis2=2).copy()
            elif self.covariance_type == "spherical":
                cov = np.diagonal(cov, axis1=1, axis2=2).mean(1)
        else:
            shape = {"full": (k, d, d), "diag": (k, d), "spherical": (k,)}[self.covariance_type]
            precisions = _array("precisions_init", self.precisions_init, shape)
            cov = _invert(precisions, self.covariance_type, "precisions_init")
        return {
            "weights": torch.as_tensor(weights, dtype=torch.float64),
            "locs": torch.as_tensor(means, dtype=torch.float64),
            "covariances": torch.as_tensor(cov, dtype=torch.float64),
        }

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any = None) -> GaussianMixture:
        """Fit the mixture to ``X`` (``y`` is ignored).

        Parameters
        ----------
        X : array-like (N, D)
        y : ignored

        Returns
        -------
        self
        """
        self._check_settings()
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        if X.shape[0] < self.n_components:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = "
                f"{self.n_components}, n_samples = {X.shape[0]}"
            )
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        x = torch.tensor(X, dtype=torch.float64)
        model = MixtureModel(int(self.n_components), self.covariance_type)
        state = self._initial_state(X)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = self._run(model, x, state, seed)
        for warning in caught:
            # the driver's own non-convergence note becomes the ConvergenceWarning below
            said = str(warning.message)
            if not (issubclass(warning.category, UserWarning) and "converge" in said):
                warnings.warn(warning.message, warning.category, stacklevel=2)
        if not result.converged:
            warnings.warn(
                f"the {self.method.upper()} fit did not meet its convergence rule "
                f"({_RULES[self.method]}); see result_.info",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.result_ = dataclasses.replace(result, guide=None)
        params, draws = relabelled_point_and_draws(result)
        self._params, self._draws = params, draws
        if draws is None:
            moments = model.em_state(params)
        else:
            moments = {k: v.mean(0) for k, v in model.em_state(draws).items()}
        self.weights_ = moments["weights"].numpy().astype(np.float64)
        self.means_ = moments["locs"].numpy().astype(np.float64)
        self.covariances_ = moments["covariances"].numpy().astype(np.float64)
        self.precisions_ = _invert(self.covariances_, self.covariance_type, "covariances_")
        self._point = model.em_params({k: v.to(torch.float64) for k, v in moments.items()})
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        if self.method == "em":
            self.lower_bound_ = float(result.info["mean_log_likelihood"])
        elif self.method == "svi":
            self.lower_bound_ = float(result.info["elbo"])
        else:
            self.lower_bound_ = math.nan
        return self

    def _run(self, model, x: torch.Tensor, state, seed: int):
        if self.method == "em":
            return fit_em(
                model, x, init=self.init_params if state is None else state,
                n_init=self.n_init, max_iter=self.max_iter, tol=self.tol,
                reg_covar=self.reg_covar, reg_covar_mode=self.reg_covar_mode, seed=seed,
                progress=False,
            )
        init = None if state is None else model.em_params(state)
        if self.method == "svi":
            return fit_svi(
                model, x, guide=self.guide, num_steps=self.num_steps,
                num_draws=self.num_draws, init="kmeans++" if init is None else init,
                seed=seed, progress=False,
            )
        return fit_mcmc(
            model, x, num_samples=self.num_samples, warmup_steps=self.warmup_steps,
            num_chains=self.num_chains, init="em" if init is None else init,
            seed=seed, progress=False,
        )

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then return the MAP component of every row of ``X``."""
        return self.fit(X, y).predict(X)

    # ------------------------------------------------------------------ reading the fit
    def _data(self, X: Any) -> torch.Tensor:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return torch.tensor(X, dtype=torch.float64)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Membership probabilities ``(N, K)``: :math:`p(z_n = k \\mid x_n)`, averaged over the
        relabelled draws for SVI and NUTS."""
        x = self._data(X)
        probs = membership_probabilities(self.result_.model, x, self._params, self._draws)
        return probs.numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable component of every row."""
        return self.predict_proba(X).argmax(axis=1)

    def score_samples(self, X: Any) -> np.ndarray:
        """Log density of every row: at the optimum (EM) or posterior predictive (SVI, NUTS)."""
        x = self._data(X)
        model = self.result_.model
        with torch.no_grad():
            if self._draws is None:
                return model.log_likelihood(x, self._params).numpy()
            n_draws = next(iter(self._draws.values())).shape[0]
            n, d = x.shape
            chunk = max(1, _CHUNK_ELEMENTS // max(1, n * self.n_components * d))
            parts = [
                model.log_likelihood(x, {k: v[s : s + chunk] for k, v in self._draws.items()})
                for s in range(0, n_draws, chunk)
            ]
            return (torch.cat(parts).logsumexp(0) - math.log(n_draws)).numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Mean of :meth:`score_samples` (higher is better)."""
        return float(self.score_samples(X).mean())

    def _point_log_likelihood(self, X: Any) -> tuple[float, int]:
        x = self._data(X)
        with torch.no_grad():
            return float(self.result_.model.log_likelihood(x, self._point).sum()), x.shape[0]

    def _n_parameters(self) -> int:
        """Free parameters, counted as scikit-learn does."""
        k, d = self.means_.shape
        cov = {"full": k * d * (d + 1) // 2, "diag": k * d, "spherical": k}[self.covariance_type]
        return int(cov + k * d + k - 1)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion at the point estimate (lower is better):
        :math:`-2 \\log p(X \\mid \\hat\\theta) + p \\log N`."""
        ll, n = self._point_log_likelihood(X)
        return -2.0 * ll + self._n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion at the point estimate (lower is better):
        :math:`-2 \\log p(X \\mid \\hat\\theta) + 2p`."""
        ll, _ = self._point_log_likelihood(X)
        return -2.0 * ll + 2.0 * self._n_parameters()

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted mixture (at the point estimate).

        Returns
        -------
        X : ndarray (n_samples, D)
        y : ndarray of int (n_samples,)
            The component of each row (rows are grouped by component, as scikit-learn).
        """
        check_is_fitted(self)
        n_samples = check_int(n_samples, "n_samples")
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        d = self.means_.shape[1]
        rows = []
        for mean, cov, count in zip(self.means_, self.covariances_, counts, strict=True):
            if self.covariance_type == "full":
                rows.append(rng.multivariate_normal(mean, cov, int(count)))
            else:
                rows.append(mean + rng.standard_normal((int(count), d)) * np.sqrt(cov))
        labels = np.concatenate([np.full(c, j, dtype=np.int64) for j, c in enumerate(counts)])
        return np.vstack(rows), labels


_RULES = {
    "em": "change of the mean log-likelihood below tol within max_iter",
    "svi": "ELBO plateau",
    "nuts": "split R-hat below 1.05 over at least two chains",
}


def _array(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def _invert(matrices: np.ndarray, covariance_type: str, name: str) -> np.ndarray:
    """Inverse of covariances or precisions in scikit-learn's shapes (checked positive)."""
    if covariance_type == "full":
        try:
            np.linalg.cholesky(matrices)
        except np.linalg.LinAlgError:
            raise ValueError(f"{name} must be symmetric positive definite") from None
        return np.linalg.inv(matrices)
    if np.any(matrices <= 0):
        raise ValueError(f"{name} must be positive")
    return 1.0 / matrices
