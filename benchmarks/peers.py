"""NUTS and full-batch SVI of ``ppl_models`` against NumPyro on the same model (issue 14).

The model: a two-component Gaussian mixture with full covariances on Old Faithful
(``data/faithful.csv``, 272 x 2, float64 on both sides), the labels summed out, and our default
priors written out in NumPyro (Dirichlet(1) weights, Normal(mean, 3 sd) locations,
Gamma(2, 2/sd) scales, LKJCholesky(2, 2) correlations). Before any timing the script checks
that the two log densities agree at one point (the EM optimum), in constrained space (the log
joint) and in unconstrained space (the potential energy, transforms' Jacobians included).

Every measurement runs in its own fresh subprocess (``--worker``), so that neither library's
threads, caches or compilation leak into the other's figures; the sides alternate (even
repeats NumPyro first). Each worker uses one intra-op thread (``torch.set_num_threads(1)``;
XLA's CPU client with ``intra_op_parallelism_threads=1``). The parent reports each worker's
wall time and CPU time (user + system, its own children included: our parallel chains run in
forked processes) and ``uptime`` before every repeat: the machine is shared.

NUTS: both start from the same point (the EM optimum), target acceptance 0.8, tree depth 10.
Ours: ``fit_mcmc`` (``--potential``, default ``auto``: the closed form compiled with
``torch.compile`` before the chains start, its compilation timed apart and included in the
wall time; chains in forked processes, one per CPU). NumPyro:
``MCMC(NUTS)`` with ``chain_method="vectorized"`` (one process, as many chains as asked). Its
compilation is measured apart: the first ``run`` (compilation + sampling) and a second ``run``
of the same ``MCMC`` object (sampling only) give ``compile = first - second``. ESS: ArviZ's
bulk ESS of every scalar of every site (constant ones skipped), after relabelling the draws to
the EM optimum's labels, minimum over scalars; ESS/s divides it by the wall time including
compilation.

SVI: a mean-field Normal guide (``AutoNormal``) started at the same point, Adam with
``lr=0.01``, ``--svi-steps`` steps, one particle. Ours: ``fit_svi(guide="mean_field")`` (the
closed-form collapsed ELBO), and, with ``--svi-trace``, the same with Pyro's ``TraceEnum_ELBO``
(what ``fit_svi`` did before); time per step: the step loop's wall time over the steps. NumPyro:
the whole fit is one ``SVI.run`` (compiling the loop, then running it); the time per step is
that of a ``jax.jit``-compiled ``SVI.update`` called once per step, its first call (the
compilation) reported apart.

Per-call costs of our potential and gradient (generic, plain tensors eager, compiled, as NUTS
calls it) with ``--tasks potential`` (our side only; compile times in a fresh process: set
``TORCHINDUCTOR_CACHE_DIR`` to an empty directory for a cold compile).

    python benchmarks/peers.py --quick            # a smoke run (seconds of sampling)
    python benchmarks/peers.py --repeats 2        # the issue's configurations
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {  # name -> (chains, warmup, samples)
    "nuts-4x500": (4, 500, 500),
    "nuts-1x500": (1, 500, 500),
    "nuts-1x2000": (1, 2000, 2000),
}
QUICK = {"nuts-2x50": (2, 50, 50)}


# ----------------------------------------------------------------------------- shared pieces
def _data_and_start():
    import torch

    from ppl_models.data import load
    from ppl_models.infer import fit_em
    from ppl_models.models import GaussianMixture

    x, _ = load("faithful")
    x = torch.as_tensor(x, dtype=torch.float64)
    model = GaussianMixture(2, "full")
    start = fit_em(model, x, seed=0, progress=False).params
    return model, x, {k: v.to(torch.float64) for k, v in start.items()}


def _numpyro_model():
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from jax.scipy.special import logsumexp

    def model(x):
        k, d = 2, x.shape[1]
        centre, spread = x.mean(0), x.std(0, ddof=1)
        weights = numpyro.sample("weights", ndist.Dirichlet(jnp.ones(k)))
        with numpyro.plate("components", k):
            locs = numpyro.sample("locs", ndist.Normal(centre, 3.0 * spread).to_event(1))
            scale = numpyro.sample("scale", ndist.Gamma(2.0, 2.0 / spread).to_event(1))
            corr = numpyro.sample("corr_chol", ndist.LKJCholesky(d, 2.0))
        tril = scale[..., :, None] * corr
        comp = ndist.MultivariateNormal(locs, scale_tril=tril)
        log_joint = comp.log_prob(x[:, None, :]) + jnp.log(weights)
        numpyro.factor("log_likelihood", logsumexp(log_joint, -1).sum())

    return model


def _relabelled_min_ess(model, draws, start) -> float:
    import arviz as az
    import numpy as np
    import torch

    from ppl_models.diagnostics.relabel import relabel_draws

    draws = {k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in draws.items()}
    draws = relabel_draws(draws, start["locs"], sites=model.relabel_sites())
    worst = math.inf
    for value in draws.values():
        flat = value.reshape(value.shape[0], value.shape[1], -1).numpy()
        for j in range(flat.shape[-1]):
            if flat[..., j].std() > 0:
                worst = min(worst, float(az.ess(flat[..., j], method="bulk")))
    return worst


# ----------------------------------------------------------------------------- workers
def _potential_costs(model, x) -> dict:
    """Per-call cost (ms, wall and CPU) of the potential energy and its gradient at one
    point: Pyro's ``potential_grad`` on the generic closed form, the plain-tensor form eager,
    compiled (1 and 4 points at once), and compiled as NUTS calls it; alternating, 3 x 500
    calls each; the first (compiling) calls timed apart."""
    import torch
    from pyro.ops.integrator import potential_grad

    from ppl_models.infer.compiled_potential import NUTSPotential, value_and_grad
    from ppl_models.infer.mixture_potential import mixture_potential
    from ppl_models.infer.potential import CollapsedPotential

    generic = CollapsedPotential(model, x)
    fast = mixture_potential(generic)
    torch.manual_seed(0)
    u1 = 0.1 * torch.randn(1, fast.size, dtype=x.dtype)
    u4 = 0.1 * torch.randn(4, fast.size, dtype=x.dtype)
    z = fast.unpack(u1[0])
    eager, nuts = value_and_grad(fast), NUTSPotential(fast, compile=True)
    compiled = nuts._value_and_grad
    out = {}
    for name, u in (("compile_1", u1), ("compile_4", u4)):
        t0, c0 = time.perf_counter(), _cpu()
        compiled(u)
        out[name] = {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu() - c0}
    calls = {
        "generic (potential_grad)": lambda: potential_grad(generic, dict(z)),
        "plain eager B=1": lambda: eager(u1),
        "plain eager B=4": lambda: eager(u4),
        "compiled B=1": lambda: compiled(u1),
        "compiled B=4": lambda: compiled(u4),
        "compiled as NUTS calls it": lambda: nuts.grads(z),
        "compiled via potential_grad": lambda: potential_grad(nuts, dict(z)),
    }
    for call in calls.values():
        for _ in range(30):
            call()
    times = {name: [] for name in calls}
    for repeat in range(3):
        order = list(calls.items()) if repeat % 2 == 0 else list(reversed(calls.items()))
        for name, call in order:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(500):
                call()
            times[name].append([2 * (time.perf_counter() - t0), 2 * (time.process_time() - c0)])
    out["ms_per_call_wall_cpu"] = times
    return out


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (compile workers)."""
    own, children = (resource.getrusage(who) for who in
                     (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _worker_ours(task: str, args) -> dict:
    import torch

    torch.set_num_threads(1)
    from ppl_models.infer import fit_mcmc, fit_svi, full_batch

    model, x, start = _data_and_start()
    if task == "potential":
        return {"wall": 0.0, "compile": 0.0, **_potential_costs(model, x)}
    if task.startswith("nuts"):
        chains, warmup, samples = {**CONFIGS, **QUICK}[task]
        t0 = time.perf_counter()
        fit = fit_mcmc(model, x, num_samples=samples, warmup_steps=warmup, num_chains=chains,
                       init=start, progress=False, potential=args.potential)
        wall = time.perf_counter() - t0
        ess = _relabelled_min_ess(model, fit.draws, start)
        return {"wall": wall, "compile": fit.info["compile_seconds"], "ess": ess,
                "ess_per_s": ess / wall,
                "divergences": sum(fit.info["divergences"]),
                "potential": fit.info["potential"]}
    if args.svi_trace_side:  # the Pyro TraceEnum_ELBO loop fit_svi ran before issue 14
        full_batch.collapsed_svi = lambda model, svi, data: svi
    t0 = time.perf_counter()
    fit = fit_svi(model, x, guide="mean_field", num_steps=args.svi_steps, lr=0.01,
                  lr_decay=1.0, init=start, seed=0, progress=False)
    wall = time.perf_counter() - t0
    return {"wall": wall, "compile": 0.0, "loop": fit.fit_seconds,
            "per_step_ms": 1e3 * fit.fit_seconds / args.svi_steps,
            "elbo": fit.info["elbo"], "loss": fit.info["loss"]}


def _worker_numpyro(task: str, args) -> dict:
    os.environ["XLA_FLAGS"] = (
        "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO, init_to_value
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.optim import Adam

    model_t, x_t, start_t = _data_and_start()
    x = jnp.asarray(x_t.numpy())
    start = {k: jnp.asarray(v.numpy()) for k, v in start_t.items()}
    model = _numpyro_model()
    if task.startswith("nuts"):
        chains, warmup, samples = {**CONFIGS, **QUICK}[task]
        kernel = NUTS(model, init_strategy=init_to_value(values=start),
                      target_accept_prob=0.8, max_tree_depth=10)
        mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=chains,
                    chain_method="vectorized", progress_bar=False)
        t0 = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(0), x)
        jax.block_until_ready(mcmc.get_samples())
        first = time.perf_counter() - t0
        draws = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        t0 = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(1), x)
        jax.block_until_ready(mcmc.get_samples())
        second = time.perf_counter() - t0
        ess = _relabelled_min_ess(model_t, draws, start_t)
        divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
        return {"wall": first, "compile": max(first - second, 0.0), "second": second,
                "ess": ess, "ess_per_s": ess / first, "divergences": divergences}
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=start))
    svi = SVI(model, guide, Adam(0.01), Trace_ELBO())
    # The whole fit as a user runs it: SVI.run compiles the loop, then runs it.
    t0 = time.perf_counter()
    result = svi.run(jax.random.PRNGKey(0), args.svi_steps, x, progress_bar=False)
    jax.block_until_ready(result.losses)
    whole = time.perf_counter() - t0
    losses = np.asarray(result.losses)
    # One compiled step at a time: the first call compiles, the others are the step's cost.
    state = svi.init(jax.random.PRNGKey(1), x)
    update = jax.jit(svi.update)
    t0 = time.perf_counter()
    state, loss = update(state, x)
    jax.block_until_ready(loss)
    compile_step = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.svi_steps - 1):
        state, loss = update(state, x)
    jax.block_until_ready(loss)
    loop = time.perf_counter() - t0
    return {"wall": whole, "compile": compile_step, "loop": loop,
            "per_step_ms": 1e3 * loop / (args.svi_steps - 1),
            "elbo": float(-losses[-100:].mean() / x.shape[0])}


def _check_densities() -> dict:
    """Our log joint and potential energy against NumPyro's at the EM optimum."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import torch
    from numpyro.infer.util import log_density, potential_energy

    from ppl_models.infer.potential import CollapsedPotential

    model_t, x_t, start_t = _data_and_start()
    ours = CollapsedPotential(model_t, x_t)
    x = jnp.asarray(x_t.numpy())
    start = {k: jnp.asarray(v.numpy()) for k, v in start_t.items()}
    model = _numpyro_model()
    theirs_joint = float(log_density(model, (x,), {}, start)[0])
    ours_joint = float(ours.log_joint(start_t))
    unconstrained = ours.unconstrain(start_t)
    u = {k: jnp.asarray(v.numpy()) for k, v in unconstrained.items()}
    theirs_potential = float(potential_energy(model, (x,), {}, u))
    with torch.no_grad():
        ours_potential = float(ours(unconstrained))
    return {"log_joint": [ours_joint, theirs_joint],
            "potential": [ours_potential, theirs_potential]}


# ----------------------------------------------------------------------------- driver
def _launch(side: str, task: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--task", task,
           "--svi-steps", str(args.svi_steps), "--potential", args.potential]
    if side == "ours-trace":
        cmd[cmd.index("ours-trace")] = "ours"
        cmd.append("--svi-trace-side")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    total = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{side} {task} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"side": side, "task": task, **row, "process_wall": total, "process_cpu": cpu}


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("ours", "numpyro"))
    parser.add_argument("--task")
    parser.add_argument("--svi-trace-side", action="store_true")
    parser.add_argument("--svi-steps", type=int, default=2000)
    parser.add_argument("--potential", default="auto",
                        help="fit_mcmc's potential= for our side (auto: compiled for these runs)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tasks", default=",".join([*CONFIGS, "svi"]))
    parser.add_argument("--svi-trace", action="store_true",
                        help="also time fit_svi with Pyro's TraceEnum_ELBO (before issue 14)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.worker:
        work = _worker_ours if args.worker == "ours" else _worker_numpyro
        print(json.dumps(work(args.task, args)))
        return 0
    try:
        import jax  # noqa: F401
        import numpyro  # noqa: F401
    except ImportError:
        print("NumPyro and JAX are not installed (pip install 'ppl-models[bench]'): skipped")
        return 0
    tasks = args.tasks.split(",")
    if args.quick:
        tasks, args.svi_steps, args.repeats = [*QUICK, "svi"], 100, 1
    check = _check_densities()
    print(f"density check at the EM optimum (ours, NumPyro): {check}")
    rows = []
    for repeat in range(args.repeats):
        print(f"repeat {repeat}: {_uptime()}", flush=True)
        for task in tasks:
            sides = ["numpyro", "ours"] if repeat % 2 == 0 else ["ours", "numpyro"]
            if task == "potential":  # our side's per-call costs only
                sides = ["ours"]
            if task == "svi" and args.svi_trace:
                sides.append("ours-trace")
            for side in sides:
                row = _launch(side, task, args)
                row["repeat"] = repeat
                rows.append(row)
                print(json.dumps(row), flush=True)
    _summary(rows)
    if args.json:
        args.json.write_text(json.dumps({"check": check, "rows": rows}, indent=1))
    return 0


def _summary(rows: list[dict]) -> None:
    def span(values):
        return f"{min(values):.3g}-{max(values):.3g}" if values else "-"

    print("\ntask | side | wall s (incl. compile) | compile s | CPU s | ESS | ESS/s | ms/step")
    keys = sorted({(r["task"], r["side"]) for r in rows})
    for task, side in keys:
        sel = [r for r in rows if r["task"] == task and r["side"] == side]
        print(" | ".join([
            task, side, span([r["wall"] for r in sel]), span([r["compile"] for r in sel]),
            span([r["process_cpu"] for r in sel]),
            span([r["ess"] for r in sel if "ess" in r]),
            span([r["ess_per_s"] for r in sel if "ess_per_s" in r]),
            span([r["per_step_ms"] for r in sel if "per_step_ms" in r]),
        ]))


if __name__ == "__main__":
    sys.exit(main())
