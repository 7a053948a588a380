r"""Per-observation cluster memberships of a fitted mixture, for every fitting method.

The membership of observation :math:`n` in component :math:`k` is its responsibility

.. math::

    r_{nk}(\theta) = p(z_n = k \mid x_n, \theta)
        = \frac{w_k\, f(x_n \mid \theta_k)}{\sum_j w_j\, f(x_n \mid \theta_j)},

(Bishop, *PRML*, §9.2; scikit-learn's ``predict_proba``). A point estimate (EM, or an SVI
fit with a ``map`` guide) gives :math:`r_{nk}(\hat\theta)`. With posterior draws (SVI guide
draws, NUTS chains) the membership is the posterior mean
:math:`\bar r_{nk} = \frac1S \sum_s r_{nk}(\theta_s) = p(z_n = k \mid x)`, the label's
marginal posterior with the parameters integrated out. That average is meaningful only when
component :math:`k` is the *same* component in every draw: a mixture's likelihood is unchanged
by permuting components, so chains (and even one chain) may swap labels, and averaging over
swapped draws pulls every membership towards :math:`1/K`. The draws are therefore first put
under one labelling by :func:`~ppl_models.diagnostics.relabel.relabel_result` (Stephens,
2000), whose canonical order (components sorted by the first feature of their location) is the
one the summaries and the ArviZ data use; column ``k`` here is component ``k`` there.

The MAP label of an observation is :math:`\arg\max_k \bar r_{nk}`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from ppl_models.diagnostics.relabel import relabel_result
from ppl_models.infer.result import FitResult
from ppl_models.models.protocols import MixtureModel

__all__ = [
    "membership_probabilities",
    "membership_table",
    "memberships",
    "relabelled_point_and_draws",
]

#: Largest ``N * draws * K * D`` evaluated at once when averaging over draws (elements).
_CHUNK_ELEMENTS = 1 << 24


def relabelled_point_and_draws(
    result: FitResult,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """A mixture fit's point estimate and its draws, under one canonical labelling.

    Parameters
    ----------
    result : FitResult
        A fit of a model with the :class:`~ppl_models.models.protocols.MixtureModel` role.

    Returns
    -------
    params : dict of str to Tensor
        The point estimate with components in canonical order.
    draws : dict of str to Tensor or None
        The relabelled draws flattened over chains, each ``(S, *site_shape)``; ``None`` for a
        point estimate.
    """
    _check_mixture(result)
    relabelled = relabel_result(result)
    if relabelled.draws is None:
        return dict(relabelled.params), None
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in relabelled.draws.items()}
    return dict(relabelled.params), flat


def _check_mixture(result: FitResult) -> None:
    if not isinstance(result, FitResult):
        raise ValueError(f"memberships need a FitResult; got {type(result).__name__}")
    if not isinstance(result.model, MixtureModel):
        raise ValueError(
            f"memberships need a finite mixture (the MixtureModel role); {result.model!r} "
            "has no per-observation component labels"
        )


def membership_probabilities(
    model: MixtureModel,
    data: torch.Tensor,
    params: Mapping[str, torch.Tensor],
    draws: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Responsibilities at ``params``, or their mean over ``draws`` when draws are given.

    Parameters
    ----------
    model : MixtureModel
    data : Tensor (N, D)
    params : dict of str to Tensor
        A point estimate (used when ``draws`` is None).
    draws : dict of str to Tensor, optional
        Draws under one labelling, each ``(S, *site_shape)`` (see
        :func:`relabelled_point_and_draws`); evaluated in chunks of draws.

    Returns
    -------
    Tensor (N, K)
    """
    with torch.no_grad():
        if draws is None:
            point = {name: v.to(data.dtype) for name, v in params.items()}
            return model.responsibilities(data, point)
        n_draws = next(iter(draws.values())).shape[0]
        n, d = data.shape
        k = model.n_components
        chunk = max(1, _CHUNK_ELEMENTS // max(1, n * k * d))
        total = torch.zeros(n, k, dtype=data.dtype)
        for start in range(0, n_draws, chunk):
            part = {name: v[start : start + chunk].to(data.dtype) for name, v in draws.items()}
            total += model.responsibilities(data, part).sum(1)  # (N, s, K) -> (N, K)
        return total / n_draws


def memberships(
    result: FitResult, data: torch.Tensor | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Membership probabilities and MAP labels of every observation.

    Parameters
    ----------
    result : FitResult
        A mixture fit by EM, SVI or NUTS.
    data : array (N, D), optional
        Observations to assign (default: the data the model was fitted to).

    Returns
    -------
    probs : ndarray (N, K)
        :math:`p(z_n = k \\mid x_n, \\hat\\theta)` for a point estimate; its mean over the
        relabelled posterior draws otherwise. Rows sum to one. Columns follow the canonical
        labelling of :func:`~ppl_models.diagnostics.relabel.relabel_result`.
    labels : ndarray of int (N,)
        The most probable component of each observation.
    """
    params, draws = relabelled_point_and_draws(result)
    model = result.model
    if data is None:
        x = result.data
    else:
        x = torch.as_tensor(np.asarray(data, dtype=np.float64))
        if x.dim() != 2 or x.shape[1] != result.n_features:
            raise ValueError(
                f"data must have shape (N, {result.n_features}) like the fitted data; "
                f"got {tuple(x.shape)}"
            )
    probs = membership_probabilities(model, x.to(torch.float64), params, draws)
    probs_np = probs.detach().cpu().numpy().astype(np.float64)
    return probs_np, probs_np.argmax(axis=1).astype(np.int64)


def membership_table(result: FitResult) -> pd.DataFrame:
    """The fitted data's memberships as a table (what ``assignments.csv`` holds).

    Columns: ``row`` (0-based position in the data), ``p_0`` ... ``p_{K-1}`` (membership
    probabilities, see :func:`memberships`), ``label`` (the MAP component) and ``probability``
    (that component's membership).

    Parameters
    ----------
    result : FitResult

    Returns
    -------
    pandas.DataFrame
    """
    probs, labels = memberships(result)
    table = pd.DataFrame(probs, columns=[f"p_{k}" for k in range(probs.shape[1])])
    table.insert(0, "row", np.arange(probs.shape[0]))
    table["label"] = labels
    table["probability"] = probs[np.arange(probs.shape[0]), labels]
    return table
