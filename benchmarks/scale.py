"""Scale (issue 15): data-parallel throughput, and the memory of EM by blocks.

Two measurements, each in fresh child processes so that their figures are their own:

``throughput``
    A VAE (784 binary pixels, hidden 256, latent 10) trained by minibatch SVI for
    ``--epochs`` on ``--images`` synthetic binary images in batches of ``--batch-size``,
    launched by ``torchrun --standalone --nproc_per_node P`` for P = 1 and 2 (gloo, one thread
    per process), sides alternating (1 then 2, then 2 then 1, ...), ``--repeats`` times each.
    At P = 2 the trainer's networks train in ``DistributedDataParallel`` (the child reports
    ``info["ddp_parameters"]``, the number of weights DDP reduces; 0 at P = 1).
    Images per second = images x epochs / rank 0's training time (``fit_seconds``: the epochs
    only, not start-up); the CPU seconds are every rank's (``getrusage`` of the children).
    The global batch is the same at 1 and 2 processes (each rank takes half of it), so the
    two runs take the same steps.

``memory``
    Writes a ``--rows`` x ``--cols`` float64 ``.npy`` file (a 3-component mixture, seeded)
    under ``--tmp`` in blocks, then in one child fits ``GaussianMixture(K)`` by EM by blocks
    on its memory map (``fit_em(model, np.load(path, mmap_mode="r"), chunk_size=...)``), and in
    another the in-memory EM of its first ``--slice-rows`` rows (read with plain file reads
    into one array). Each child reports its peak resident memory (``VmHWM`` of
    ``/proc/self/status``, file-backed pages of a memory map included), the same measured
    after its imports (the interpreter, torch and pyro), and the time per EM
    iteration (by blocks: ``info["iteration_seconds"]``; in memory: the difference of a fit
    of ``--iters`` iterations and one of 1, divided by ``iters - 1``, after an untimed
    warm-up fit on 2,000 rows). The file is deleted at the end, whatever happens.

    nice -n 15 python benchmarks/scale.py throughput --json t.json
    nice -n 15 python benchmarks/scale.py memory --json m.json
    python benchmarks/scale.py throughput --quick     # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _child_json(cmd: list[str]) -> tuple[dict, float]:
    """Run ``cmd``; its last stdout line is JSON. Returns it and the children's CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(done.stdout.strip().splitlines()[-1]), cpu


# ----------------------------------------------------------------------------- throughput
def _train(args: argparse.Namespace) -> None:
    """Child under torchrun: one VAE fit; rank 0 prints its training seconds."""
    import torch

    from ppl_models.infer import distributed, fit_svi
    from ppl_models.models import VAE

    distributed.init_from_env()
    rank, world = distributed.world()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.images, 784, generator=g) < 0.2).float()
    torch.manual_seed(0)
    model = VAE(784, 10, hidden=(256,))
    result = fit_svi(model, x, batch_size=args.batch_size, num_epochs=args.epochs,
                     progress=False, seed=0)
    if rank == 0:
        print(json.dumps({"world": world, "fit_seconds": result.fit_seconds,
                          "elbo": result.history["elbo"][-1],
                          "ddp_parameters": result.info.get("ddp_parameters", 0)}))


def throughput(args: argparse.Namespace) -> dict:
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for rep in range(args.repeats):
        for procs in ((1, 2) if rep % 2 == 0 else (2, 1)):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(procs), str(HERE), "_train", "--images",
                   str(args.images), "--epochs", str(args.epochs), "--batch-size",
                   str(args.batch_size)]
            out, cpu = _child_json(cmd)
            rate = args.images * args.epochs / out["fit_seconds"]
            runs[procs].append({"fit_seconds": out["fit_seconds"], "images_per_second": rate,
                                "cpu_seconds": cpu, "elbo": out["elbo"],
                                "ddp_parameters": out["ddp_parameters"]})
            print(f"{procs} process(es): {rate:8.0f} images/s, {out['fit_seconds']:.2f} s "
                  f"training, {cpu:.1f} CPU s (whole run), {out['ddp_parameters']} weights "
                  "in DDP", flush=True)
    rate = {p: [r["images_per_second"] for r in rs] for p, rs in runs.items()}
    ratios = [b / a for a, b in zip(rate[1], rate[2], strict=True)]
    summary = {
        "images": args.images, "epochs": args.epochs, "batch_size": args.batch_size,
        "runs": runs,
        "median_images_per_second": {p: statistics.median(v) for p, v in rate.items()},
        "ratio_2_over_1": {"median": statistics.median(ratios), "min": min(ratios),
                           "max": max(ratios)},
    }
    print(f"ratio 2/1 processes: median {summary['ratio_2_over_1']['median']:.2f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f})")
    return summary


# ----------------------------------------------------------------------------- memory
def _write(path: Path, rows: int, cols: int, block: int = 1 << 20) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    means = rng.normal(0.0, 3.0, (3, cols))
    target = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, cols))
    for start in range(0, rows, block):
        n = min(block, rows - start)
        labels = rng.integers(0, 3, n)
        target[start : start + n] = means[labels] + rng.normal(size=(n, cols))
    target.flush()
    del target


def _maxrss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (reset by ``exec``, unlike
    ``ru_maxrss``, which a child started by ``fork``/``exec`` inherits from its parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _write_child(args: argparse.Namespace) -> None:
    _write(Path(args.path), args.rows, args.cols)
    print(json.dumps({"written": args.path}))


def _em_blocks(args: argparse.Namespace) -> None:
    import numpy as np

    from ppl_models.infer import fit_em
    from ppl_models.models import GaussianMixture

    base = _maxrss_mb()
    data = np.load(args.path, mmap_mode="r")
    start = time.perf_counter()
    fit = fit_em(GaussianMixture(args.k), data, chunk_size=args.chunk, max_iter=args.iters,
                 tol=0.0, progress=False)
    print(json.dumps({"rows": int(data.shape[0]), "maxrss_mb": _maxrss_mb(),
                      "after_imports_mb": base, "fit_seconds": time.perf_counter() - start,
                      "iteration_seconds": fit.info["iteration_seconds"],
                      "mean_log_likelihood": fit.info["mean_log_likelihood"]}))


def _read_rows(path: str, rows: int):
    """The first ``rows`` rows of a ``.npy`` file by plain reads (no memory map)."""
    import numpy as np

    with open(path, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(fh)
        return np.fromfile(fh, dtype=dtype, count=rows * shape[1]).reshape(rows, shape[1])


def _em_memory(args: argparse.Namespace) -> None:
    import torch

    from ppl_models.infer import fit_em
    from ppl_models.models import GaussianMixture

    base = _maxrss_mb()
    x = torch.from_numpy(_read_rows(args.path, args.rows))
    fit_em(GaussianMixture(args.k), x[:2000], max_iter=1, tol=0.0, progress=False)  # warm-up
    times = {}
    for iters in (1, args.iters):
        start = time.perf_counter()
        fit = fit_em(GaussianMixture(args.k), x, max_iter=iters, tol=0.0, progress=False)
        times[iters] = time.perf_counter() - start
    per_iter = (times[args.iters] - times[1]) / (args.iters - 1)
    print(json.dumps({"rows": args.rows, "maxrss_mb": _maxrss_mb(), "after_imports_mb": base,
                      "fit_seconds": times[args.iters], "seconds_per_iteration": per_iter,
                      "mean_log_likelihood": fit.info["mean_log_likelihood"]}))


def memory(args: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="scale-", dir=args.tmp))
    path = folder / "big.npy"
    try:
        start = time.perf_counter()
        # In a child: the parent never maps the file (its resident pages would be inherited).
        _child_json([sys.executable, str(HERE), "_write", "--path", str(path), "--rows",
                     str(args.rows), "--cols", str(args.cols)])
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        common = ["--k", str(args.k), "--iters", str(args.iters)]
        blocks, blocks_cpu = _child_json([sys.executable, str(HERE), "_em_blocks", "--path",
                                          str(path), "--chunk", str(args.chunk), *common])
        per = blocks["iteration_seconds"]
        print(f"by blocks, {args.rows} rows: peak {blocks['maxrss_mb']:.0f} MB (after imports "
              f"{blocks['after_imports_mb']:.0f} MB), {statistics.median(per):.2f} s/iteration "
              f"(range {min(per):.2f}-{max(per):.2f}), {blocks_cpu:.0f} CPU s", flush=True)
        whole, whole_cpu = _child_json([sys.executable, str(HERE), "_em_memory", "--path",
                                        str(path), "--rows", str(args.slice_rows), *common])
        print(f"in memory, {args.slice_rows} rows: peak {whole['maxrss_mb']:.0f} MB (after "
              f"imports {whole['after_imports_mb']:.0f} MB), "
              f"{whole['seconds_per_iteration']:.2f} s/iteration, {whole_cpu:.0f} CPU s")
    finally:
        path.unlink(missing_ok=True)
        folder.rmdir()
    return {"rows": args.rows, "cols": args.cols, "k": args.k, "chunk": args.chunk,
            "file_gb": args.rows * args.cols * 8 / 1e9,
            "blocks": {**blocks, "cpu_seconds": blocks_cpu},
            "in_memory": {**whole, "cpu_seconds": whole_cpu}}


# ----------------------------------------------------------------------------- command line
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--images", type=int, default=12000)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=200)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--quick", action="store_true", help="600 images, 1 repeat")
    t.add_argument("--json", type=Path)
    m = sub.add_parser("memory")
    m.add_argument("--rows", type=int, default=20_000_000)
    m.add_argument("--cols", type=int, default=10)
    m.add_argument("--slice-rows", type=int, default=2_000_000)
    m.add_argument("--k", type=int, default=3)
    m.add_argument("--iters", type=int, default=3)
    m.add_argument("--chunk", type=int, default=1 << 16)
    m.add_argument("--tmp", default="/tmp")
    m.add_argument("--quick", action="store_true", help="200,000 rows, a 20,000-row slice")
    m.add_argument("--json", type=Path)
    child = sub.add_parser("_train")
    child.add_argument("--images", type=int)
    child.add_argument("--epochs", type=int)
    child.add_argument("--batch-size", type=int)
    for name in ("_em_blocks", "_em_memory", "_write"):
        c = sub.add_parser(name)
        c.add_argument("--path")
        c.add_argument("--rows", type=int)
        c.add_argument("--chunk", type=int)
        c.add_argument("--k", type=int)
        c.add_argument("--iters", type=int)
        c.add_argument("--cols", type=int)
    args = parser.parse_args()
    if args.what.startswith("_"):
        children = {"_train": _train, "_em_blocks": _em_blocks, "_em_memory": _em_memory,
                    "_write": _write_child}
        children[args.what](args)
        return
    if args.quick and args.what == "throughput":
        args.images, args.repeats = 600, 1
    if args.quick and args.what == "memory":
        args.rows, args.slice_rows = 200_000, 20_000
    print(f"{platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    summary = throughput(args) if args.what == "throughput" else memory(args)
    summary["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
