"""Closed-form EM of ``ppl_models`` against scikit-learn's ``GaussianMixture``.

For each problem (N x d x K) the script simulates data from a random, fairly well separated
Gaussian mixture (fixed seed), picks ONE starting point (K random data points as means, equal
weights, the data covariance for every component) and fits, in the same process and from that
same start:

(a) ``sklearn.mixture.GaussianMixture(weights_init=, means_init=, precisions_init=, tol=1e-3,
    reg_covar=1e-6)``;
(b) ``ppl_models.infer.fit_em(GaussianMixture(K, cov_type), x, init={weights, locs,
    covariances}, tol=1e-3, reg_covar=1e-6, reg_covar_mode="absolute", progress=False)``.

Each fit is timed alone (``time.perf_counter`` around the fit call only; scoring is outside
the timed region). One small fit of each library is run first, untimed, so that import and
first-call costs (torch's lazy initialisation, scikit-learn's validation caches) are excluded,
and every timed fit follows a short pause so that the other library's idle BLAS/OpenMP threads
have stopped spinning. Each fit is repeated ``--repeats`` times and the median time is
reported. The environment (``OPENBLAS_CORETYPE``, thread counts) is left as it is and printed.

Goals: the same mean log-likelihood per observation within 1e-4, and
time(ours) / time(scikit-learn) <= 0.33.

End to end (``--end-to-end``, after the fixed-start comparison): each library from its OWN
default start on the same data, for ``--seeds`` seeds, sides alternating (even seeds
scikit-learn first, odd seeds ours first):

(c) ``sklearn.mixture.GaussianMixture(K, random_state=seed).fit(x)`` (its defaults: k-means
    start, ``n_init=1``, ``tol=1e-3``, ``reg_covar=1e-6``);
(d) ``ppl_models.infer.fit_em(GaussianMixture(K), x, seed=seed, progress=False)`` (its
    defaults: k-means start, ``reg_covar`` relative to each feature's variance).

The end-to-end comparison is repeated ``--repeats`` times (every seed, both sides, each
time) and the range over repeats of the ratios (wall and CPU) is printed after the repeats.
The time includes the initialisation. A seed *reaches the best* when its mean log-likelihood
is within ``REACH`` of the best found by any fit of either library on that problem. Goals: our
share of seeds reaching the best at least scikit-learn's, and median time(ours) /
median time(scikit-learn) <= 0.5.

The script always exits 0 (it is a benchmark), except with ``--check``, which exits 1 when the
log-likelihood goal is missed (never for the speed goal).

    python benchmarks/gmm_em.py                 # the two full problems, 3 repeats
    python benchmarks/gmm_em.py --quick         # tiny smoke run (a few seconds)
    python benchmarks/gmm_em.py --end-to-end --seeds 10   # + each library's default start
    OMP_NUM_THREADS=1 python benchmarks/gmm_em.py --end-to-end --seeds 10 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import sklearn
import torch
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_models.infer import fit_em
from ppl_models.models import GaussianMixture

LOGLIK_GOAL = 1e-4
RATIO_GOAL = 0.33
TOL = 1e-3
REG_COVAR = 1e-6
PAUSE = 0.25  # seconds of idling before each timed fit

END_TO_END_RATIO_GOAL = 0.5
#: Distance (mean log-likelihood per observation) to the best fit that counts as reaching it.
REACH = 5e-3

#: (N, d, K) of the full benchmark and of ``--quick``.
PROBLEMS = [(100_000, 2, 5), (10_000, 10, 5)]
QUICK_PROBLEMS = [(2_000, 2, 3), (1_000, 5, 3)]


@dataclass
class Outcome:
    n: int
    d: int
    k: int
    sk_iter: int
    our_iter: int
    sk_ll: float
    our_ll: float
    sk_seconds: float
    our_seconds: float
    sk_times: list[float]
    our_times: list[float]

    @property
    def delta(self) -> float:
        return abs(self.our_ll - self.sk_ll)

    @property
    def ratio(self) -> float:
        return self.our_seconds / self.sk_seconds

    @property
    def loglik_ok(self) -> bool:
        return self.delta <= LOGLIK_GOAL

    @property
    def speed_ok(self) -> bool:
        return self.ratio <= RATIO_GOAL


def simulate(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """``n`` points from a random K-component GMM with well-spread means (fixed seed)."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 5.0))
    means = rng.normal(0.0, 4.0, size=(k, d))
    covs = []
    for _ in range(k):
        a = rng.normal(size=(d, d))
        covs.append(a @ a.T / d + 0.5 * np.eye(d))
    labels = rng.choice(k, size=n, p=weights)
    x = np.empty((n, d))
    for j in range(k):
        idx = np.flatnonzero(labels == j)
        x[idx] = rng.multivariate_normal(means[j], covs[j], size=idx.size)
    return x


def initial_values(x: np.ndarray, k: int, covariance_type: str, seed: int):
    """Equal weights, K distinct random data points as means, the data covariance for all.

    Returns ``(weights, means, covariances, precisions)`` with the covariances and precisions
    in scikit-learn's compact form for ``covariance_type``.
    """
    rng = np.random.default_rng(seed + 1)
    weights = np.full(k, 1.0 / k)
    means = x[rng.choice(len(x), size=k, replace=False)].copy()
    cov = np.atleast_2d(np.cov(x.T))
    if covariance_type == "full":
        covariances = np.stack([cov] * k)
        precisions = np.linalg.inv(covariances)
    elif covariance_type == "diag":
        covariances = np.stack([np.diag(cov)] * k)
        precisions = 1.0 / covariances
    else:
        covariances = np.full(k, np.diag(cov).mean())
        precisions = 1.0 / covariances
    return weights, means, covariances, precisions


def fit_sklearn(x, k, covariance_type, init, max_iter):
    w0, m0, _, p0 = init
    model = SkGaussianMixture(
        k,
        covariance_type=covariance_type,
        weights_init=w0,
        means_init=m0,
        precisions_init=p0,
        tol=TOL,
        max_iter=max_iter,
        reg_covar=REG_COVAR,
    )
    start = time.perf_counter()
    model.fit(x)
    seconds = time.perf_counter() - start
    return model, seconds


def fit_ours(x_t, k, covariance_type, init, max_iter):
    w0, m0, c0, _ = init
    model = GaussianMixture(k, covariance_type)
    start = time.perf_counter()
    result = fit_em(
        model,
        x_t,
        init={"weights": w0, "locs": m0, "covariances": c0},
        tol=TOL,
        reg_covar=REG_COVAR,
        reg_covar_mode="absolute",  # as scikit-learn's, for a like-for-like comparison
        max_iter=max_iter,
        progress=False,
        standard_errors=False,
    )
    seconds = time.perf_counter() - start
    return result, seconds


def warm_up(covariance_type: str, max_iter: int) -> None:
    """One small untimed fit of each library (first-call costs out of the timings)."""
    x = simulate(500, 3, 2, seed=123)
    init = initial_values(x, 2, covariance_type, seed=123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_sklearn(x, 2, covariance_type, init, max_iter)
        fit_ours(torch.from_numpy(x), 2, covariance_type, init, max_iter)


def run_problem(n, d, k, covariance_type, max_iter, repeats, seed) -> Outcome:
    x = simulate(n, d, k, seed)
    x_t = torch.from_numpy(x)
    init = initial_values(x, k, covariance_type, seed)
    sk_times, our_times = [], []
    sk_model = result = None
    with warnings.catch_warnings():
        # Non-convergence within max_iter is reported through n_iter below.
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            # A pause before each fit lets the other library's idle BLAS/OpenMP threads stop
            # spinning, so that each fit runs alone on the cores.
            time.sleep(PAUSE)
            sk_model, seconds = fit_sklearn(x, k, covariance_type, init, max_iter)
            sk_times.append(seconds)
            time.sleep(PAUSE)
            result, seconds = fit_ours(x_t, k, covariance_type, init, max_iter)
            our_times.append(seconds)
    return Outcome(
        n=n,
        d=d,
        k=k,
        sk_iter=int(sk_model.n_iter_),
        our_iter=int(result.n_iter),
        sk_ll=float(sk_model.score(x)),
        our_ll=float(result.info["mean_log_likelihood"]),
        sk_seconds=statistics.median(sk_times),
        our_seconds=statistics.median(our_times),
        sk_times=sk_times,
        our_times=our_times,
    )


@dataclass
class EndToEnd:
    n: int
    d: int
    k: int
    sk_ll: list[float]
    our_ll: list[float]
    sk_seconds: list[float]
    our_seconds: list[float]
    sk_cpu: list[float]
    our_cpu: list[float]

    @property
    def best(self) -> float:
        return max(self.sk_ll + self.our_ll)

    def share(self, lls: list[float]) -> float:
        return sum(ll >= self.best - REACH for ll in lls) / len(lls)

    @property
    def ratio(self) -> float:
        return statistics.median(self.our_seconds) / statistics.median(self.sk_seconds)

    @property
    def cpu_ratio(self) -> float:
        return statistics.median(self.our_cpu) / statistics.median(self.sk_cpu)

    @property
    def goals_met(self) -> bool:
        return (
            self.share(self.our_ll) >= self.share(self.sk_ll)
            and self.ratio <= END_TO_END_RATIO_GOAL
        )


def _default_sklearn(x: np.ndarray, k: int, seed: int, max_iter: int):
    start, cpu = time.perf_counter(), time.process_time()
    model = SkGaussianMixture(k, random_state=seed, max_iter=max_iter).fit(x)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return float(model.score(x)), seconds, cpu


def _default_ours(x_t: torch.Tensor, k: int, seed: int, max_iter: int):
    start, cpu = time.perf_counter(), time.process_time()
    result = fit_em(GaussianMixture(k), x_t, seed=seed, max_iter=max_iter, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return float(result.info["mean_log_likelihood"]), seconds, cpu


def run_end_to_end(n, d, k, seeds, max_iter, data_seed) -> EndToEnd:
    x = simulate(n, d, k, data_seed)
    x_t = torch.from_numpy(x)
    out = EndToEnd(n, d, k, [], [], [], [], [], [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(seeds):
            sides = [("sk", _default_sklearn, x), ("our", _default_ours, x_t)]
            for side, fit, data in sides if seed % 2 == 0 else sides[::-1]:
                time.sleep(PAUSE)
                ll, seconds, cpu = fit(data, k, seed, max_iter)
                getattr(out, f"{side}_ll").append(ll)
                getattr(out, f"{side}_seconds").append(seconds)
                getattr(out, f"{side}_cpu").append(cpu)
    return out


def report_end_to_end(e: EndToEnd, label: str = "") -> None:
    def span(values: list[float]) -> str:
        ms = [v * 1e3 for v in values]
        return f"median {statistics.median(ms):8.1f} ms (range {min(ms):.1f}-{max(ms):.1f})"

    ratios = [o / s for o, s in zip(e.our_seconds, e.sk_seconds, strict=True)]
    print(f"\nend to end{label}, N={e.n:,} x d={e.d} x K={e.k}, {len(e.sk_ll)} seeds "
          "(default starts)")
    print(f"  best mean log-lik      {e.best:.6f} (reach: within {REACH:g})")
    for side, lls in (("scikit-learn", e.sk_ll), ("ours", e.our_ll)):
        worst = min(lls)
        print(
            f"  {side:<13s} reached {e.share(lls):4.0%}   worst {worst:.6f}   "
            f"time {span(getattr(e, 'sk_seconds' if side == 'scikit-learn' else 'our_seconds'))}"
        )
    print(f"  CPU time (process)     scikit-learn median {statistics.median(e.sk_cpu) * 1e3:.1f} "
          f"ms, ours {statistics.median(e.our_cpu) * 1e3:.1f} ms, ratio {e.cpu_ratio:.3f}")
    print(
        f"  ratio of medians ours/sk {e.ratio:.3f} (per seed {min(ratios):.3f}-{max(ratios):.3f})"
        f"   (goal <= {END_TO_END_RATIO_GOAL:g}; share goal: ours >= scikit-learn): "
        f"{'met' if e.goals_met else 'NOT met'}"
    )


def report_end_to_end_repeats(rounds: list[EndToEnd]) -> None:
    """The range over repeats of the end-to-end ratios, and each repeat's shares."""
    e = rounds[0]
    walls = [r.ratio for r in rounds]
    cpus = [r.cpu_ratio for r in rounds]
    shares = ", ".join(
        f"{r.share(r.sk_ll) * len(r.sk_ll):.0f}/{len(r.sk_ll)} vs "
        f"{r.share(r.our_ll) * len(r.our_ll):.0f}/{len(r.our_ll)}"
        for r in rounds
    )
    print(
        f"\nend to end, N={e.n:,} x d={e.d} x K={e.k}, over {len(rounds)} repeat(s): "
        f"ratio of medians ours/sk, wall {min(walls):.3f}-{max(walls):.3f} "
        f"(median {statistics.median(walls):.3f}), CPU {min(cpus):.3f}-{max(cpus):.3f} "
        f"(median {statistics.median(cpus):.3f}); share reached, scikit-learn vs ours: "
        f"{shares}; goals met on {sum(r.goals_met for r in rounds)} of {len(rounds)} repeat(s)"
    )


def report(o: Outcome, covariance_type: str) -> None:
    print(f"\nN={o.n:,} x d={o.d} x K={o.k} ({covariance_type} covariances)")
    print(f"  n_iter            scikit-learn {o.sk_iter:>4d}   ours {o.our_iter:>4d}")
    print(f"  mean log-lik      scikit-learn {o.sk_ll:.10f}   ours {o.our_ll:.10f}")
    print(
        f"  |delta log-lik|   {o.delta:.3e}   (goal <= {LOGLIK_GOAL:g}: "
        f"{'met' if o.loglik_ok else 'NOT met'})"
    )
    print(
        f"  time (median)     scikit-learn {o.sk_seconds * 1e3:9.1f} ms   "
        f"ours {o.our_seconds * 1e3:9.1f} ms"
    )
    per_repeat = [a / b for a, b in zip(o.our_times, o.sk_times, strict=True)]
    print(
        f"  ratio ours/sk     {o.ratio:.3f}   (goal <= {RATIO_GOAL:g}: "
        f"{'met' if o.speed_ok else 'NOT met'}; per repeat {min(per_repeat):.3f}-"
        f"{max(per_repeat):.3f} over {len(per_repeat)})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny problems, one repeat")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed fits per library and problem (the median is reported), and rounds of "
        "the end-to-end comparison (the range is reported) (default 3, 1 with --quick)",
    )
    parser.add_argument("--covariance-type", default="full", choices=("full", "diag", "spherical"))
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="also compare each library from its own default start (full covariances)",
    )
    parser.add_argument("--seeds", type=int, default=10, help="seeds of the end-to-end runs")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the log-likelihood goal is missed (not the speed goal)",
    )
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be at least 1")

    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {np.__version__}, scikit-learn {sklearn.__version__}"
    )
    print(
        f"torch.get_num_threads() = {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS = {os.environ.get('OMP_NUM_THREADS', '(unset)')}, os.cpu_count() = "
        f"{os.cpu_count()}, OPENBLAS_CORETYPE = {os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )
    print(
        f"tol={TOL:g}, reg_covar={REG_COVAR:g}, max_iter={args.max_iter}, "
        f"repeats={repeats} (median), float64; one untimed warm-up fit of each library"
    )

    warm_up(args.covariance_type, args.max_iter)
    outcomes = []
    for n, d, k in QUICK_PROBLEMS if args.quick else PROBLEMS:
        o = run_problem(n, d, k, args.covariance_type, args.max_iter, repeats, args.seed)
        report(o, args.covariance_type)
        outcomes.append(o)

    loglik_ok = all(o.loglik_ok for o in outcomes)
    speed_ok = all(o.speed_ok for o in outcomes)
    print(
        f"\nlog-likelihood goal: {'met' if loglik_ok else 'NOT met'}; "
        f"speed goal: {'met' if speed_ok else 'NOT met'}"
    )
    if args.end_to_end:
        ends = []
        for n, d, k in QUICK_PROBLEMS if args.quick else PROBLEMS:
            rounds = []
            for r in range(repeats):  # every seed, both sides, once per repeat
                e = run_end_to_end(n, d, k, args.seeds, args.max_iter, args.seed)
                report_end_to_end(e, f" (repeat {r + 1} of {repeats})")
                rounds.append(e)
            report_end_to_end_repeats(rounds)
            ends.extend(rounds)
        print(
            f"\nend-to-end goals (every repeat of every problem): "
            f"{'met' if all(e.goals_met for e in ends) else 'NOT met'}"
        )
    if args.check and not loglik_ok:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
