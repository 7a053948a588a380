r"""Covariance regularisation on the data's own scale, and what a collapse is caused by.

EM for a Gaussian mixture adds :math:`\epsilon_d` to the diagonal of every covariance
(scikit-learn's ``reg_covar``), so that a component sitting on a few (nearly) identical points
keeps a finite likelihood. An absolute :math:`\epsilon` is not invariant to units: data in
metres and the same data in nanometres get different fits, and data measured on a scale of
:math:`10^{-8}` are swamped by :math:`\epsilon = 10^{-6}`. In ``"relative"`` mode (the default
of :func:`~ppl_models.infer.fit_em`)

.. math:: \epsilon_d = \texttt{reg\_covar} \times \widehat{\operatorname{Var}}(x_{\cdot d}),

the (biased) variance of feature :math:`d`, so that rescaling feature :math:`d` by :math:`a_d`
rescales :math:`\epsilon_d` by :math:`a_d^2`, the fitted covariances by the same factors, and the
log-likelihood by exactly the Jacobian :math:`-N \sum_d \log |a_d|`; shifting the data changes
nothing. ``"absolute"`` keeps :math:`\epsilon_d = \texttt{reg\_covar}` (scikit-learn's choice).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

__all__ = [
    "REG_COVAR_MODES",
    "check_resolution",
    "check_resolution_from_moments",
    "collapse_causes",
    "feature_variance",
    "reg_covar_from_variance",
    "reg_covar_per_feature",
]

REG_COVAR_MODES = ("relative", "absolute")

#: Largest spacing of representable values near a feature's values, relative to the
#: feature's standard deviation, that still lets a fit resolve the data's spread.
_MAX_RELATIVE_SPACING = 1e-3


def feature_variance(data: torch.Tensor) -> torch.Tensor:
    """Each feature's (biased) variance, ``(D,)`` (0 for a single row)."""
    return (data - data.mean(0)).square_().mean(0)


def reg_covar_per_feature(
    data: torch.Tensor, reg_covar: float, mode: str, *, variance: torch.Tensor | None = None
) -> torch.Tensor:
    r"""The diagonal term :math:`\epsilon_d` added to every covariance, shape ``(D,)``.

    Parameters
    ----------
    data : Tensor (N, D)
    reg_covar : float
        Non-negative.
    mode : {"relative", "absolute"}
        ``relative``: ``reg_covar`` times each feature's variance; ``absolute``: ``reg_covar``.
    variance : Tensor (D,), optional
        :func:`feature_variance` of ``data`` when the caller has it already.

    Raises
    ------
    ValueError
        Unknown mode, or (relative mode, ``reg_covar > 0``) a feature whose values are all
        equal: its maximum-likelihood variance is 0 and its likelihood unbounded.
    """
    if mode not in REG_COVAR_MODES:
        raise ValueError(f"reg_covar_mode must be one of {REG_COVAR_MODES}; got {mode!r}")
    if mode == "absolute":
        return torch.full((data.shape[1],), float(reg_covar), dtype=data.dtype)
    var = feature_variance(data) if variance is None else variance
    return reg_covar_from_variance(var, reg_covar, mode)


def reg_covar_from_variance(var: torch.Tensor, reg_covar: float, mode: str) -> torch.Tensor:
    """:func:`reg_covar_per_feature` from each feature's variance ``(D,)`` (for callers that
    accumulate the variances themselves, such as EM by blocks); the same checks and errors."""
    if mode not in REG_COVAR_MODES:
        raise ValueError(f"reg_covar_mode must be one of {REG_COVAR_MODES}; got {mode!r}")
    if mode == "absolute":
        return torch.full_like(var, float(reg_covar))
    constant = [int(j) for j in torch.nonzero(~(var > 0)).flatten()]
    if constant and reg_covar > 0:
        raise ValueError(
            f"feature(s) {constant} are constant (zero variance): a Gaussian mixture's "
            "likelihood is unbounded there; drop them, or pass reg_covar_mode='absolute' to "
            "floor their variance at reg_covar"
        )
    return reg_covar * var


def check_resolution(
    data: torch.Tensor,
    columns: Sequence[str] | None = None,
    *,
    variance: torch.Tensor | None = None,
) -> None:
    """Refuse data whose spread the floating-point grid cannot resolve.

    Values near :math:`10^8` are 8 apart in float32: a feature with a spread of 1 there is
    rounded onto a few grid points and the fit reports a likelihood that belongs to the grid,
    not to the data. A feature is refused when the spacing of representable values at its
    largest magnitude exceeds ``1e-3`` of its standard deviation.

    ``variance``, if given, is :func:`feature_variance` of ``data`` (computed once by a caller
    that needs it too).

    Raises
    ------
    ValueError
        Naming the feature, the spacing and the remedy (float64, or centring the data).
    """
    if data.shape[0] < 2:
        return
    std = (feature_variance(data) if variance is None else variance).sqrt()
    # The largest magnitude of all has the widest spacing: if it passes for the narrowest
    # (non-constant) feature, every feature passes (one full reduction, no per-column one).
    low, high = torch.aminmax(data)
    top = torch.maximum(low.abs(), high)
    top_spacing = torch.nextafter(top, torch.full_like(top, math.inf)) - top
    narrowest = std.masked_fill(~(std > 0), math.inf).amin()
    if bool(top_spacing <= _MAX_RELATIVE_SPACING * narrowest):
        return
    check_resolution_from_moments(std, data.abs().amax(0), data.dtype, columns)


def check_resolution_from_moments(std: torch.Tensor, largest: torch.Tensor, dtype: torch.dtype,
                                  columns: Sequence[str] | None = None) -> None:
    """:func:`check_resolution` from each feature's standard deviation and largest magnitude
    ``(D,)`` in the fit's ``dtype`` (for callers that accumulate them, such as EM by blocks)."""
    top = largest.to(dtype)
    spacing = (torch.nextafter(top, torch.full_like(top, math.inf)) - top).to(std.dtype)
    bad = torch.nonzero((std > 0) & (spacing > _MAX_RELATIVE_SPACING * std)).flatten()
    if bad.numel() == 0:
        return
    j = int(bad[0])
    name = columns[j] if columns is not None and j < len(columns) else f"feature {j}"
    remedy = (
        "pass the data as float64 and fit in float64 (load() reads float64; fit_em's "
        "dtype=torch.float64)"
        if dtype != torch.float64
        else "subtract a reference value (centre the data) before fitting"
    )
    raise ValueError(
        f"{name}: values up to {float(largest[j]):.6g} are spaced "
        f"{float(spacing[j]):.3g} apart in {str(dtype).removeprefix('torch.')}, too coarse "
        f"for a spread (standard deviation) of {float(std[j]):.3g}; {remedy}"
    )


def collapse_causes(
    covariances: torch.Tensor,
    weights: torch.Tensor,
    n_obs: int,
    reg: torch.Tensor,
    *,
    held: bool,
    data_var: torch.Tensor,
    columns: Sequence[str] | None = None,
) -> list[str]:
    r"""One sentence per collapsed component, naming the cause found.

    A component has collapsed when it holds less than one observation's worth of weight
    (``weights * n_obs < 1``: more components than the data support), or when its variance
    along some direction fell to the regularisation floor: the smallest eigenvalue of
    :math:`E^{-1/2} \Sigma_k E^{-1/2}` (:math:`E = \operatorname{diag}(\epsilon)`) is at most
    10 (the component sits on (nearly) identical or collinear points). A floor above 1% of a
    feature's own variance is named as the cause instead: the data are on a scale where
    ``reg_covar`` dominates (typically an absolute ``reg_covar`` on data in small units).

    Parameters
    ----------
    covariances : Tensor (K, D, D)
    weights : Tensor (K,)
    n_obs : int
    reg : Tensor (D,)
        The floor :math:`\epsilon_d` actually added.
    held : bool
        Whether the M-step adds the floor (closed form) or not (generic M-step).
    data_var : Tensor (D,)
        Each feature's variance.
    columns : sequence of str, optional
        Feature names for the messages.
    """
    names = list(columns) if columns else [f"feature {j}" for j in range(reg.shape[0])]
    notes: list[str] = []
    over = (reg > 1e-2 * data_var).tolist()
    swamped = [names[j] for j in range(reg.shape[0]) if over[j]]
    if swamped:
        notes.append(
            f"components collapsed onto the regularisation: the reg_covar floor (up to "
            f"{float(reg.max()):.3g}) is not small against the variance of {swamped} (smallest "
            f"{float(data_var.min()):.3g}), so the fit reflects reg_covar, not the data; use "
            "reg_covar_mode='relative' (the default), a smaller reg_covar, or rescale the data"
        )
        return notes
    empty = [int(k) for k in torch.nonzero(weights * n_obs < 1.0).flatten()]
    if empty:
        notes.append(
            f"component(s) {empty} collapsed to less than one observation's worth of weight: "
            "more components than the data support (try fewer components)"
        )
    floor = torch.where(reg > 0, reg, torch.ones_like(reg))
    scaled = covariances / (floor.sqrt().unsqueeze(-1) * floor.sqrt().unsqueeze(-2))
    if not torch.isfinite(scaled).all():
        bad = sorted({int(k) for k in torch.nonzero(~torch.isfinite(scaled))[:, 0]})
        return [*notes, f"component(s) {bad} collapsed to a non-finite covariance"]
    symmetric = 0.5 * (scaled + scaled.mT)
    limit = 10.0 if bool((reg > 0).all()) else 0.0
    eye = torch.eye(symmetric.shape[-1], dtype=symmetric.dtype)
    if not bool(torch.linalg.cholesky_ex(symmetric - limit * eye).info.any()):
        return notes  # every eigenvalue above the limit (a Cholesky factor exists): none on it
    try:
        smallest = torch.linalg.eigvalsh(symmetric)[..., 0]
    except torch.linalg.LinAlgError:  # too ill-conditioned to decompose: the diagonal bounds it
        smallest = torch.diagonal(scaled, dim1=-2, dim2=-1).amin(-1)
    on_floor = [
        int(k) for k in torch.nonzero(smallest <= limit).flatten() if int(k) not in empty
    ]
    if on_floor:
        diag = torch.diagonal(covariances, dim1=-2, dim2=-1)[on_floor] / floor
        worst = sorted({names[int(j)] for j in diag.argmin(-1)})
        how = (
            "its covariance is held at the reg_covar floor"
            if held
            else "the generic M-step does not floor variances: consider priors "
            "(objective='map')"
        )
        notes.append(
            f"component(s) {on_floor} collapsed onto (nearly) identical or collinear points "
            f"(smallest variance along {worst} at most 10 x the floor; duplicated rows or a "
            f"discrete-valued feature?); {how}"
        )
    return notes


def moment_covariances(model, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Full ``(K, D, D)`` covariances of a mixture's site values."""
    full = model.full_params(params, params["locs"].shape[-1])
    return model.covariances(full)
