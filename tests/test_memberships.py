"""Per-observation memberships against scikit-learn and a brute-force scipy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import softmax
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_models import GaussianMixture, load
from ppl_models.diagnostics.clustering import match_clusters
from ppl_models.diagnostics.memberships import membership_table, memberships
from ppl_models.infer import FitResult, fit_em


@pytest.fixture(scope="module")
def faithful() -> np.ndarray:
    x, _ = load("faithful", dtype=torch.float64)
    return x.numpy()


@pytest.fixture(scope="module")
def em_fit(faithful):
    return fit_em(GaussianMixture(2), torch.as_tensor(faithful), n_init=3, seed=0, progress=False)


def scipy_responsibilities(x: np.ndarray, weights, means, covariances) -> np.ndarray:
    """Brute force: w_k N(x_n | mu_k, Sigma_k), normalised over k, with scipy's densities."""
    log_joint = np.stack(
        [
            np.log(w) + stats.multivariate_normal(m, c).logpdf(x)
            for w, m, c in zip(weights, means, covariances, strict=True)
        ],
        axis=1,
    )
    return softmax(log_joint, axis=1)


def test_em_memberships_agree_with_sklearn_predict(faithful, em_fit):
    probs, labels = memberships(em_fit)
    assert probs.shape == (272, 2) and labels.shape == (272,)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    sk = SkGaussianMixture(2, n_init=3, random_state=0).fit(faithful)
    sk_labels = sk.predict(faithful)
    mapping = match_clusters(labels, sk_labels)
    agree = np.mean([mapping[int(a)] == b for a, b in zip(labels, sk_labels, strict=True)])
    assert agree >= 0.99
    # the probabilities too, once columns are matched
    order = [k for k, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
    np.testing.assert_allclose(probs[:, order], sk.predict_proba(faithful), atol=1e-4)


def test_membership_table_columns(em_fit):
    table = membership_table(em_fit)
    assert list(table.columns) == ["row", "p_0", "p_1", "label", "probability"]
    np.testing.assert_allclose(table[["p_0", "p_1"]].sum(axis=1), 1.0, atol=1e-12)
    assert (table["probability"] >= 0.5).all()
    assert (table["label"] == table[["p_0", "p_1"]].to_numpy().argmax(1)).all()


def _draws_around(em_fit, n_draws: int, swap: np.ndarray, seed: int = 0):
    """Posterior-like draws: the EM optimum jittered, components swapped where ``swap``."""
    gen = torch.Generator().manual_seed(seed)
    params = em_fit.params
    draws = {}
    for name, value in params.items():
        noise = 1 + 0.01 * torch.randn(n_draws, *value.shape, generator=gen, dtype=value.dtype)
        jittered = value * noise if name in ("locs", "scale") else value.expand_as(noise)
        draws[name] = jittered.clone()
    draws["weights"] = draws["weights"] / draws["weights"].sum(-1, keepdim=True)
    flipped = torch.as_tensor(swap)
    for name in draws:
        draws[name][flipped] = draws[name][flipped].flip(1)
    return {k: v.unsqueeze(0) for k, v in draws.items()}  # one chain


def test_draw_average_relabels_before_averaging(faithful, em_fit):
    n_draws = 40
    swap = np.arange(n_draws) % 2 == 1  # every other draw has its components swapped
    draws = _draws_around(em_fit, n_draws, swap)
    model = em_fit.model
    result = FitResult(
        model=model, method="nuts", data=em_fit.data, params=em_fit.params, draws=draws,
        history={}, converged=True, n_iter=n_draws, seed=0, fit_seconds=0.0,
    )
    probs, labels = memberships(result)
    # brute force: each draw's responsibilities with scipy, the swapped draws swapped back,
    # averaged; columns in the order of increasing first location (the canonical order)
    expected = np.zeros((272, 2))
    for s in range(n_draws):
        one = {k: v[0, s] for k, v in draws.items()}
        state = {k: v.numpy() for k, v in model.em_state(one).items()}
        r = scipy_responsibilities(faithful, state["weights"], state["locs"], state["covariances"])
        expected += r[:, ::-1] if swap[s] else r
    expected /= n_draws
    first = model.em_state(em_fit.params)["locs"][:, 0].numpy()
    expected = expected[:, np.argsort(first)]
    np.testing.assert_allclose(probs, expected, atol=1e-10)
    np.testing.assert_array_equal(labels, expected.argmax(1))
    # without relabelling, the swapped average would blur every membership towards 1/2
    assert probs.max(1).mean() > 0.9


def test_new_data_and_bad_input(em_fit, faithful):
    probs, _ = memberships(em_fit, faithful[:5])
    np.testing.assert_allclose(probs, memberships(em_fit)[0][:5], atol=1e-12)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        memberships(em_fit, faithful[:, :1])
    with pytest.raises(ValueError, match="FitResult"):
        memberships(em_fit.params)
