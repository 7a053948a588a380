"""EM's default start (k-means) against scikit-learn's k-means and GaussianMixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_models.infer import em as em_module
from ppl_models.infer import fit_em
from ppl_models.infer.kmeans import cluster_moments, kmeans, kmeans_labels, kmeans_moments
from ppl_models.models import GaussianMixture

CENTRES = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0], [4.0, 16.0]])


def _five_clusters(n_per: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(size=(n_per, 2)) + c for c in CENTRES])


@pytest.fixture(scope="module")
def five() -> np.ndarray:
    return _five_clusters()


@pytest.mark.parametrize("seed", range(4))
def test_kmeans_inertia_matches_scikit_learn_best_of_ten(five: np.ndarray, seed: int) -> None:
    reference = KMeans(5, n_init=10, random_state=0).fit(five).inertia_
    x = torch.as_tensor(five)
    full = kmeans(x, 5, torch.Generator().manual_seed(seed), sample_size=len(five))
    assert full.inertia <= reference * (1 + 1e-6)
    # On the default subsample (400 points per centre) the centres are a start for EM,
    # within 1% of the best inertia.
    sub = kmeans(x, 5, torch.Generator().manual_seed(seed))
    assert reference <= sub.inertia * (1 + 1e-9) and sub.inertia <= reference * 1.01


def test_kmeans_labels_are_nearest_centres_and_centres_their_means(five: np.ndarray) -> None:
    x = torch.as_tensor(five)
    fit = kmeans(x, 5, torch.Generator().manual_seed(1), sample_size=len(five), tol=0.0)
    brute = torch.stack([(x - c).square().sum(1) for c in fit.centres], 1).argmin(1)
    assert torch.equal(fit.labels, brute)
    for j in range(5):
        torch.testing.assert_close(fit.centres[j], x[fit.labels == j].mean(0))
    inertia = float((x - fit.centres[fit.labels]).square().sum())
    assert fit.inertia == pytest.approx(inertia, rel=1e-12)


def test_kmeans_moments_are_the_hard_m_step(five: np.ndarray) -> None:
    x = torch.as_tensor(five)
    w, mu, cov = kmeans_moments(x, 5, torch.Generator().manual_seed(2), 0.0)
    fit = kmeans(x, 5, torch.Generator().manual_seed(2))
    assert fit.sample is not None and len(fit.sample) == 2000  # 400 points per centre
    labels = fit.labels.numpy()
    for j in range(5):
        members = five[labels == j]
        assert float(w[j]) == pytest.approx(len(members) / len(five))
        np.testing.assert_allclose(mu[j].numpy(), members.mean(0), rtol=1e-12)
        np.testing.assert_allclose(cov[j].numpy(), np.cov(members.T, bias=True), rtol=1e-10)


@pytest.mark.parametrize("seed", range(6))
def test_default_start_reaches_scikit_learn_best(five: np.ndarray, seed: int) -> None:
    best = SkGaussianMixture(5, n_init=10, random_state=0).fit(five).score(five)
    result = fit_em(GaussianMixture(5), torch.as_tensor(five), seed=seed, progress=False)
    assert result.info["mean_log_likelihood"] >= best - 1e-3
    assert not result.info["warnings"]


def test_kmeans_with_fewer_distinct_points_than_centres() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    fit = kmeans(x, 3, torch.Generator().manual_seed(0))
    assert fit.inertia == 0.0 and set(fit.labels.tolist()) <= {0, 1, 2}


def test_a_collapsed_start_is_retried_from_the_next_seeding(
    five: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first start puts a component on one point (its covariance is the reg_covar floor,
    # it collapses); the restart must be retried from the next k-means seeding and end as a
    # clean fit.
    real = em_module.kmeans_labels
    calls = []

    def first_collapses(data, k, generator, **options):
        calls.append(1)
        labels = real(data, k, generator, **options)
        if len(calls) == 1:
            labels[labels == 0] = 1
            labels[0] = 0
        return labels

    monkeypatch.setattr(em_module, "kmeans_labels", first_collapses)
    x = torch.as_tensor(five)
    result = fit_em(GaussianMixture(5), x, seed=0, progress=False)
    assert len(calls) == 2
    best = SkGaussianMixture(5, n_init=10, random_state=0).fit(five).score(five)
    assert result.info["mean_log_likelihood"] >= best - 1e-3 and not result.info["warnings"]


def test_float32_em_matches_scikit_learn_from_the_same_start(five: np.ndarray) -> None:
    # The float32 path (its own Cholesky and precision algebra) against scikit-learn in
    # float64, both from the same start.
    rng = np.random.default_rng(3)
    means = CENTRES + rng.normal(scale=1.0, size=CENTRES.shape)
    cov = np.cov(five.T)
    sk = SkGaussianMixture(
        5, means_init=means, weights_init=np.full(5, 0.2),
        precisions_init=np.stack([np.linalg.inv(cov)] * 5), tol=1e-6, max_iter=500,
    ).fit(five)
    init = {"weights": np.full(5, 0.2), "locs": means, "covariances": np.stack([cov] * 5)}
    ours = fit_em(
        GaussianMixture(5), torch.as_tensor(five), init=init, dtype=torch.float32, tol=1e-6,
        max_iter=500, reg_covar_mode="absolute", progress=False,
    )
    assert ours.params["locs"].dtype == torch.float32
    assert abs(ours.info["mean_log_likelihood"] - sk.score(five)) < 1e-4
    order = [int(np.argmin(((sk.means_ - m) ** 2).sum(1))) for m in ours.params["locs"].numpy()]
    np.testing.assert_allclose(ours.params["locs"].numpy(), sk.means_[order], atol=1e-3)
    full_cov = GaussianMixture(5).em_state(
        {k: v.double() for k, v in ours.params.items()})["covariances"]
    np.testing.assert_allclose(full_cov.numpy(), sk.covariances_[order], atol=1e-3)


def test_greedy_seeding_puts_one_seed_in_each_separated_cluster(five: np.ndarray) -> None:
    # The seeds alone (no Lloyd iteration): greedy k-means++ (best of 2 + ln K candidates per
    # centre) lands one seed in each of 5 clusters 8 standard deviations apart on almost every
    # seed; the truth is the cluster each point was simulated from.
    x = torch.as_tensor(five)
    truth = np.repeat(np.arange(5), len(five) // 5)
    covered = 0
    for seed in range(50):
        fit = kmeans(x, 5, torch.Generator().manual_seed(seed), n_init=1, max_iter=0,
                     sample_size=len(five))
        nearest = [int((x - c).square().sum(1).argmin()) for c in fit.centres]
        covered += len({int(truth[i]) for i in nearest}) == 5
    assert covered >= 45


# ------------------------------------------------------------------ the fast start's pieces
@pytest.mark.parametrize("n_init", [1, 3, 5])
@pytest.mark.parametrize("data", ["five", "uniform"])
def test_batched_seedings_equal_one_seeding_at_a_time(
    five: np.ndarray, n_init: int, data: str
) -> None:
    # kmeans runs every seeding at once; the reference is the one-at-a-time algorithm
    # (k-means++ seeding, then Lloyd until the centres move less than tol, best inertia),
    # which must give the very same centres, seed after seed. On uniform data (no clusters)
    # Lloyd stops on tol before a fixed point, so when each seeding stops matters.
    from ppl_models.infer import kmeans as km

    uniform = np.random.default_rng(5).uniform(size=(5000, 2))
    x = torch.as_tensor(five if data == "five" else uniform)
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        xc = x - x.mean(0)
        sample = xc[torch.randperm(len(x), generator=gen)[:2000]]
        sq = sample.square().sum(1)
        tol = 1e-4 * float(sample.var(0, unbiased=False).mean())
        best = None
        for _ in range(n_init):
            centres, inertia = km._lloyd(sample, sq, km._seed(sample, sq, 5, gen), 100, tol)
            if best is None or inertia < best[1]:
                best = (centres, inertia)
        fit = kmeans(x, 5, torch.Generator().manual_seed(seed), n_init=n_init)
        assert torch.equal(fit.centres, best[0] + x.mean(0))


def test_kmeans_labels_are_kmeans_labels(five: np.ndarray) -> None:
    x = torch.as_tensor(five)
    for seed in range(4):
        fit = kmeans(x, 5, torch.Generator().manual_seed(seed))
        labels = kmeans_labels(x, 5, torch.Generator().manual_seed(seed))
        brute = torch.stack([(x - c).square().sum(1) for c in fit.centres], 1).argmin(1)
        assert torch.equal(labels, brute) and torch.equal(labels, fit.labels)


@pytest.mark.parametrize("cov", ["full", "diag", "spherical"])
def test_start_from_labels_is_the_clusters_moments(five: np.ndarray, cov: str) -> None:
    # The start EM takes from k-means labels (sums of the prepared quadratic features)
    # against each cluster's weight, mean and covariance computed by NumPy.
    rng = np.random.default_rng(0)
    data = five @ rng.normal(size=(2, 2)) + 100.0  # correlated, off-centre
    labels = torch.as_tensor(rng.integers(0, 5, size=len(data)))
    reg = np.array([1e-3, 2e-3])
    model = GaussianMixture(5, cov)
    state = model.em_start_from_labels(
        model.em_prepare(torch.as_tensor(data)), labels, torch.as_tensor(reg)
    )
    assert state is not None
    for j in range(5):
        members = data[labels.numpy() == j]
        assert float(state["weights"][j]) == pytest.approx(len(members) / len(data), rel=1e-12)
        np.testing.assert_allclose(state["locs"][j].numpy(), members.mean(0), rtol=1e-12)
        expected = np.cov(members.T, bias=True) + np.diag(reg)
        if cov == "diag":
            expected = np.diag(expected)
        elif cov == "spherical":
            expected = np.diag(expected).mean()
        np.testing.assert_allclose(state["covariances"][j].numpy(), expected, rtol=1e-9)


def test_start_from_labels_declines_an_empty_cluster(five: np.ndarray) -> None:
    x = torch.as_tensor(five)
    labels = torch.zeros(len(x), dtype=torch.long)
    labels[len(x) // 2 :] = 1  # clusters 2..4 empty
    model = GaussianMixture(5)
    assert model.em_start_from_labels(model.em_prepare(x), labels, 1e-6) is None
    # fit_em then takes each cluster's own moments and reports the empty components
    w, _, _ = cluster_moments(x, labels, 5, 1e-6)
    assert w.tolist()[2:] == [0.0, 0.0, 0.0]


def test_batched_lloyd_moves_empty_clusters_as_one_at_a_time() -> None:
    # Centres far from every point leave clusters empty; each is moved to the point farthest
    # from its own centre, in the batch exactly as in Lloyd one set at a time.
    from ppl_models.infer import kmeans as km

    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sets = torch.tensor(
        [[[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]],
         [[0.0, 1.0], [50.0, 50.0], [60.0, 60.0]],
         [[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]],
        dtype=torch.float64,
    )
    sq = x.square().sum(1)
    centres, inertias = km._lloyd_batch(x, sq, sets, 100, 1e-4)
    for j in range(3):
        reference, inertia = km._lloyd(x, sq, sets[j], 100, 1e-4)
        assert torch.equal(centres[j], reference)
        assert float(inertias[j]) == pytest.approx(inertia, rel=1e-12)
        assert (centres[j] - x.unsqueeze(1)).square().sum(-1).argmin(1).unique().numel() == 3


def test_nearest_centre_on_exact_ties_is_the_first_as_argmin() -> None:
    # Points on an integer grid and centres at half-integers: many points are exactly as far
    # from two or more centres. The label (and the one-hot of the Lloyd step) must be the
    # first nearest centre, as torch.argmin over an explicit distance table picks it.
    from ppl_models.infer import kmeans as km

    grid = torch.cartesian_prod(torch.arange(6.0), torch.arange(6.0)).to(torch.float64)
    centres = torch.tensor([[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [4.0, 4.0]], dtype=torch.float64)
    brute = torch.stack([(grid - c).square().sum(1) for c in centres], 1)  # (N, K)
    reference = brute.argmin(1)
    ties = (brute == brute.amin(1, keepdim=True)).sum(1) > 1
    assert int(ties.sum()) > 0  # the case under test is present
    assert torch.equal(km._nearest(grid, centres), reference)
    scores = brute.T.contiguous()
    one_hot, counts = km._assign(scores)
    assert torch.equal(one_hot.argmax(0), reference)
    assert torch.equal(one_hot.sum(0), torch.ones(36, dtype=torch.float64))  # one label each
    assert torch.equal(counts, torch.bincount(reference, minlength=4).to(torch.float64))
    # batched layout (sets, K, N): each set as alone
    both = torch.stack([scores, scores.flip(0)])
    one_hot_b, _ = km._assign(both)
    assert torch.equal(one_hot_b[0], one_hot)
    assert torch.equal(one_hot_b[1].argmax(0), scores.flip(0).T.argmin(1))


def test_kmeans_labels_of_centred_data_are_those_of_the_data(five: np.ndarray) -> None:
    x = torch.as_tensor(five) + 1e3
    for seed in range(3):
        labels = kmeans_labels(x, 5, torch.Generator().manual_seed(seed))
        centred = kmeans_labels(x - x.mean(0), 5, torch.Generator().manual_seed(seed), centred=True)
        assert torch.equal(labels, centred)
        brute = kmeans(x, 5, torch.Generator().manual_seed(seed)).labels
        assert torch.equal(labels, brute)
