"""Issue 15: data-parallel training and out-of-core / distributed EM.

One ``torchrun --standalone --nproc_per_node 2`` launch (gloo, CPU) runs
``tests/scale_worker.py``; its fits are compared here with single-process references that do
not go through the distributed code: EM on all the rows in memory, SVI in one process on the
same global batches, and (for the VAE, whose noise each rank draws from its own seed) a
hand-written loop that takes each step on both ranks' rows at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import scale_worker as worker
import torch

from ppl_models.cli import main
from ppl_models.data import check_data, csv_to_npy, load, open_npy
from ppl_models.infer import FitResult, distributed, fit_em, fit_svi
from ppl_models.infer.chunks import iter_chunks
from ppl_models.infer.trainer import Batches
from ppl_models.models import GaussianMixture, StudentTMixture

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("torchrun")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(ROOT / "tests" / "scale_worker.py"), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out / "results.pt", weights_only=False), out


def _max_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((torch.as_tensor(a[k]) - torch.as_tensor(b[k])).abs().max()) for k in a)


# ------------------------------------------------------------------------------------- EM
def test_distributed_em_equals_the_in_memory_fit(launched):
    results, _ = launched
    ref = fit_em(GaussianMixture(3, "full"), torch.from_numpy(worker.em_data()), progress=False,
                 **worker.EM)
    assert ref.converged and ref.n_iter > 10
    for rank in results["em"]:
        assert rank["n_iter"] == ref.n_iter
        assert _max_gap(rank["params"], ref.params) < 1e-8
        assert rank["ll"] == pytest.approx(ref.info["log_likelihood"], rel=1e-12)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_chunked_em_equals_the_in_memory_fit(covariance_type, tmp_path):
    x = worker.em_data()
    ref = fit_em(GaussianMixture(3, covariance_type), torch.from_numpy(x), n_init=2,
                 progress=False, **worker.EM)
    assert ref.n_iter > 10
    chunked = fit_em(GaussianMixture(3, covariance_type), torch.from_numpy(x), n_init=2,
                     chunk_size=333, progress=False, **worker.EM)
    np.save(tmp_path / "x.npy", x)
    mapped = fit_em(GaussianMixture(3, covariance_type), np.load(tmp_path / "x.npy",
                                                                  mmap_mode="r"),
                    n_init=2, progress=False, **worker.EM)
    for fit in (chunked, mapped):
        assert fit.n_iter == ref.n_iter
        assert _max_gap(fit.params, ref.params) < 1e-8
        assert fit.history["objective"] == pytest.approx(ref.history["objective"], rel=1e-12)
        assert fit.info["restart_objectives"] == pytest.approx(ref.info["restart_objectives"])
        assert fit.info["bic"] == pytest.approx(ref.info["bic"], rel=1e-12)
    assert mapped.info["chunk_size"] > 0
    assert mapped.data.shape == (x.shape[0], 3)


def test_chunked_em_from_a_dict_start_and_small_data():
    x = torch.from_numpy(worker.em_data()[:200])
    start = {"weights": torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64),
             "locs": x[:3].clone(), "covariances": torch.eye(3, dtype=torch.float64).expand(
                 3, 3, 3).clone()}
    ref = fit_em(GaussianMixture(3), x, init=start, progress=False)
    fit = fit_em(GaussianMixture(3), x, init=start, chunk_size=7, progress=False)
    assert fit.n_iter == ref.n_iter
    assert _max_gap(fit.params, ref.params) < 1e-8


def test_chunked_em_refusals():
    x = torch.from_numpy(worker.em_data()[:100])
    with pytest.raises(ValueError, match="GaussianMixture"):
        fit_em(StudentTMixture(2), x, chunk_size=10)
    with pytest.raises(ValueError, match="kmeans"):
        fit_em(GaussianMixture(2), x, chunk_size=10, init="random")
    with pytest.raises(ValueError, match="process group"):
        fit_em(GaussianMixture(2), x, distributed=True)
    with pytest.raises(ValueError, match="standard errors"):
        fit_em(GaussianMixture(2), x, chunk_size=10, standard_errors=True)
    bad = x.clone()
    bad[57, 1] = float("nan")
    with pytest.raises(ValueError, match=r"rows 50\.\.59.*NaN"):
        fit_em(GaussianMixture(2), bad, chunk_size=10)


@pytest.mark.parametrize("as_memmap", [False, True])
@pytest.mark.parametrize("fit_dtype", [torch.float32, torch.float64])
def test_chunked_em_refuses_unresolved_data_as_in_memory_em_does(tmp_path, as_memmap, fit_dtype):
    # float32 values near 1e8 are 8 apart: a spread of 1 there is rounded away, whatever the
    # fit's precision; both paths must refuse it with the same message
    rng = np.random.default_rng(3)
    x32 = (1e8 + rng.normal(scale=[300.0, 1000.0], size=(400, 2))).astype(np.float32)
    with pytest.raises(ValueError, match="spaced 8 apart in float32") as in_memory:
        fit_em(GaussianMixture(2), torch.from_numpy(x32), dtype=fit_dtype)
    data = torch.from_numpy(x32)
    if as_memmap:
        np.save(tmp_path / "x.npy", x32)
        data = open_npy(tmp_path / "x.npy")
    with pytest.raises(ValueError, match="spaced 8 apart in float32") as by_blocks:
        fit_em(GaussianMixture(2), data, chunk_size=100, dtype=fit_dtype)
    assert str(by_blocks.value) == str(in_memory.value)


# ------------------------------------------------------------------------------------ SVI
def test_gmm_by_svi_on_two_ranks_equals_one_process(launched):
    results, _ = launched
    seen: list = []
    fit_svi(worker.gmm_model, worker.gmm_data(), guide=worker.gmm_guide, progress=False,
            callback=lambda epoch, history: seen.append(worker.store()), **worker.GMM_SVI)
    assert len(seen) == worker.GMM_SVI["num_epochs"]
    assert _max_gap(seen[0], seen[-1]) > 1e-3  # the parameters moved
    for rank in results["gmm_svi"]:
        assert len(rank) == len(seen)
        for got, want in zip(rank, seen, strict=True):
            assert _max_gap(got, want) < 1e-6


def _vae_reference(ranks: int = 2) -> list[dict[str, torch.Tensor]]:
    """The VAE steps of one process that, for every global batch, computes each rank's
    piece with that rank's noise and sums the pieces' losses weighted by their rows."""
    settings = worker.VAE_SVI
    data = worker.vae_data()
    model = worker.vae_model()
    n, size, seed = data.shape[0], settings["batch_size"], settings["seed"]
    order = torch.Generator().manual_seed(seed)
    torch.randperm(n, generator=order)  # the evaluation batch
    noise = []
    for r in range(ranks):
        torch.manual_seed(seed + 1000 * r)
        noise.append(torch.get_rng_state())
    steps = -(-n // size) * settings["num_epochs"]
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.1 ** (1 / steps))
    after = []
    for _ in range(settings["num_epochs"]):
        for r in range(ranks):  # each rank's DataLoader draws its base seed once per epoch
            torch.set_rng_state(noise[r])
            torch.empty((), dtype=torch.int64).random_()
            noise[r] = torch.get_rng_state()
        for batch in torch.randperm(n, generator=order).split(size):
            total = 0.0
            for r, piece in enumerate(batch.tensor_split(ranks)):
                torch.set_rng_state(noise[r])
                terms = model.elbo_terms(data[piece])
                noise[r] = torch.get_rng_state()
                elbo = (terms["reconstruction"] - terms["kl"]).sum() * (n / len(piece))
                total = total - elbo * (len(piece) / len(batch))
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            schedule.step()
        after.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return after


def test_vae_on_two_ranks_equals_one_process_seeing_both_shards(launched):
    results, _ = launched
    want = _vae_reference()
    assert _max_gap(want[0], want[-1]) > 1e-3
    for rank in results["vae"]:
        assert len(rank) == len(want)
        for got, ref in zip(rank, want, strict=True):
            assert _max_gap(got, ref) < 1e-6


def test_networks_train_in_ddp_and_global_parameters_by_hand(launched):
    results, _ = launched
    info = results["info"]
    vae, gan = worker.vae_model(), worker.gan_model()
    assert info["vae"] == {"ddp_parameters": sum(p.numel() for p in vae.parameters()),
                           "all_reduced_parameters": 0}
    assert info["gan"] == {"ddp_parameters": sum(p.numel() for p in gan.parameters()),
                           "all_reduced_parameters": 0}
    assert info["gmm_svi"] == {"ddp_parameters": 0, "all_reduced_parameters": 4}


def _gan_reference(ranks: int = 2) -> list[dict[str, torch.Tensor]]:
    """The GAN steps of one process that, for every global batch, computes each rank's piece
    with that rank's noise: a discriminator update on the pieces' cross-entropies weighted by
    their rows, then a generator update on their non-saturating losses, alike."""
    settings = worker.GAN_STEPS
    data = worker.gan_data()
    model = worker.gan_model()
    n, size, seed = data.shape[0], settings["batch_size"], settings["seed"]
    order = torch.Generator().manual_seed(seed)
    torch.randperm(n, generator=order)  # the evaluation batch
    noise = []
    for r in range(ranks):
        torch.manual_seed(seed + 1000 * r)
        noise.append(torch.get_rng_state())
    g_opt = torch.optim.Adam(model.generator.parameters(), lr=settings["lr"], betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(model.discriminator.parameters(), lr=settings["lr"],
                             betas=(0.5, 0.999))

    def fakes(r: int, rows: int) -> torch.Tensor:
        torch.set_rng_state(noise[r])
        z = model.prior_distribution().sample((rows,))
        noise[r] = torch.get_rng_state()
        return model.transform(z)

    after = []
    for _ in range(settings["num_epochs"]):
        for r in range(ranks):  # each rank's DataLoader draws its base seed once per epoch
            torch.set_rng_state(noise[r])
            torch.empty((), dtype=torch.int64).random_()
            noise[r] = torch.get_rng_state()
        for batch in torch.randperm(n, generator=order).split(size):
            pieces = batch.tensor_split(ranks)
            d_total = 0.0
            for r, piece in enumerate(pieces):
                with torch.no_grad():
                    fake = fakes(r, len(piece))
                d_loss = (torch.nn.functional.softplus(-model.discriminator(data[piece])).mean()
                          + torch.nn.functional.softplus(model.discriminator(fake)).mean())
                d_total = d_total + d_loss * (len(piece) / len(batch))
            d_opt.zero_grad()
            d_total.backward()
            d_opt.step()
            g_total = 0.0
            for r, piece in enumerate(pieces):
                logits = model.discriminator(fakes(r, len(piece)))
                g_total = g_total + (torch.nn.functional.softplus(-logits).mean()
                                     * (len(piece) / len(batch)))
            g_opt.zero_grad()
            g_total.backward()
            g_opt.step()
        after.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return after


def test_gan_on_two_ranks_equals_one_process_seeing_both_shards(launched):
    results, _ = launched
    want = _gan_reference()
    assert _max_gap(want[0], want[-1]) > 1e-3
    for rank in results["gan_steps"]:
        assert len(rank) == len(want)
        for got, ref in zip(rank, want, strict=True):
            assert _max_gap(got, ref) < 1e-6


def test_resume_on_two_ranks_ends_as_uninterrupted(launched):
    results, out = launched
    for rank in results["resume"]:
        assert rank["stopped_gap"] > 1e-4  # stopped after 2 epochs: not yet the end
        assert rank["gap"] < 1e-6
    assert (out / "checkpoint0" / "checkpoint.pt").is_file()
    assert not (out / "checkpoint1").exists()  # only rank 0 writes


def test_adversarial_fit_on_two_ranks_agrees_and_resumes(launched):
    results, out = launched
    first, second = results["gan"]
    assert torch.equal(first["whole"], second["whole"])  # both ranks hold the same networks
    for rank in (first, second):
        assert float((rank["whole"] - rank["part"]).abs().max()) > 1e-4
        assert float((rank["whole"] - rank["resumed"]).abs().max()) < 1e-6
    assert (out / "gan0" / "checkpoint.pt").is_file() and not (out / "gan1").exists()


def test_adversarial_command_line_under_torchrun_writes_once(launched):
    results, out = launched
    assert results["cli"] == [{"gan": 0, "aae": 0}] * 2
    for model in ("gan", "aae"):
        assert not (out / f"cli_{model}1").exists()  # only rank 0 writes
        metrics = json.loads((out / f"cli_{model}0" / "metrics.json").read_text())
        assert metrics["n_epochs"] == 2 and metrics["n_train"] == 1500
        fit = FitResult.load(out / f"cli_{model}0" / "fit")
        assert fit.info["world_size"] == 2
        trained = sum(p.numel() for p in fit.model.parameters() if p.requires_grad)
        assert fit.info["ddp_parameters"] == trained
        assert len(fit.history["d_loss"]) == 2 * 10  # 1500 images in global batches of 150


def test_select_device_takes_the_local_rank_s_gpu_with_nccl_and_the_cpu_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.select_device() == ("gloo", torch.device("cpu"))
    with pytest.raises(ValueError, match="needs CUDA"):
        distributed.select_device("nccl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.select_device() == ("nccl", torch.device("cuda", 1))
    assert distributed.select_device("gloo") == ("gloo", torch.device("cpu"))
    monkeypatch.delenv("LOCAL_RANK")
    assert distributed.select_device() == ("nccl", torch.device("cuda", 0))
    for bad in ("2", "-1", "x"):
        monkeypatch.setenv("LOCAL_RANK", bad)
        with pytest.raises(ValueError, match=f"LOCAL_RANK='{bad}' names no GPU.*2 visible"):
            distributed.select_device()


def test_init_from_env_sets_the_selected_gpu_before_joining(monkeypatch):
    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend: calls.append(("init", backend)))
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.init_from_env()
    assert calls == [("set_device", torch.device("cuda", 3)), ("init", "nccl")]
    calls.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.init_from_env()
    assert calls == [("init", "gloo")]


def test_batches_split_every_global_batch_between_ranks():
    n, size = 61, 20
    views = [Batches(torch.arange(n).double().unsqueeze(1), size, 4, rank=r, world=2)
             for r in range(2)]
    whole = Batches(torch.arange(n).double().unsqueeze(1), size, 4, rank=0, world=1)
    for _ in range(2):  # two epochs, each a fresh permutation
        pieces = [list(v) for v in views]
        batches = list(whole)
        assert len(pieces[0]) == len(pieces[1]) == len(batches) == 4
        for i, (batch, _) in enumerate(batches):
            rows = [p[i][1] for p in pieces]
            weights = [v.weight(i) for v in views]
            kept = torch.cat([r for r, w in zip(rows, weights, strict=True) if w > 0])
            assert torch.equal(kept, batch.squeeze(1).long())
            assert sum(weights) == pytest.approx(1.0)
    assert [v.weight(3) for v in views] == [1.0, 0.0]  # 1 row left: rank 1 sits out


# ------------------------------------------------------------------------------ from disk
def test_csv_to_npy_reads_blocks_like_load(tmp_path):
    rng = np.random.default_rng(4)
    values = rng.normal(size=(1003, 3))
    path = tmp_path / "big.csv"
    path.write_text("a;b;c\n" + "".join(
        ";".join(f"{v:.17g}".replace(".", ",") for v in row) + "\n" for row in values))
    mapped, names = csv_to_npy(path, tmp_path / "big.npy", ["c", "a"], chunk_rows=100)
    assert names == ["c", "a"]
    np.testing.assert_array_equal(mapped, values[:, [2, 0]])
    loaded, _ = load(path, columns=["c", "a"])
    np.testing.assert_array_equal(mapped, loaded.numpy())
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n" * 1 + "3,\n")
    with pytest.raises(ValueError, match="NaN"):
        csv_to_npy(bad, tmp_path / "bad.npy", chunk_rows=1)


def test_a_memory_map_is_checked_by_blocks_and_never_copied(tmp_path):
    x = np.arange(30.0).reshape(10, 3)
    np.save(tmp_path / "x.npy", x)
    mapped = open_npy(tmp_path / "x.npy")
    tensor = check_data(mapped)
    assert not tensor.untyped_storage().resizable()  # a view of the file, not a copy
    tensor[0, 0] = -1.0  # copy-on-write: the file keeps its values
    assert np.load(tmp_path / "x.npy")[0, 0] == 0.0
    loaded, names = load(tmp_path / "x.npy", columns=[2, 0])
    np.testing.assert_array_equal(loaded.numpy(), x[:, [2, 0]])
    assert names == ["x[2]", "x[0]"]
    (tmp_path / "text.npy").write_text("a\n1\n")
    with pytest.raises(ValueError, match=r"not a readable \.npy"):
        load(tmp_path / "text.npy")
    blocks = [block for _, block in iter_chunks(mapped, 4)]
    assert [b.shape[0] for b in blocks] == [4, 4, 2]
    np.testing.assert_array_equal(torch.cat(blocks).numpy(), x)
    with pytest.raises(ValueError, match="2-D"):
        np.save(tmp_path / "flat.npy", np.arange(3.0))
        open_npy(tmp_path / "flat.npy")


def test_cli_fits_a_memory_mapped_npy(tmp_path):
    x = worker.em_data()[:800]
    np.save(tmp_path / "big.npy", x)
    out = tmp_path / "run"
    status = main(["fit", "gmm", "--data", str(tmp_path / "big.npy"), "--components", "3",
                   "--chunk-size", "300", "--no-plots", "--quiet", "--out", str(out)])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    ref = fit_em(GaussianMixture(3), torch.from_numpy(x), progress=False)
    assert metrics["n_iter"] == ref.n_iter
    assert metrics["mean_log_likelihood"] == pytest.approx(ref.info["mean_log_likelihood"],
                                                           rel=1e-10)
    assert metrics["chunk_size"] == 300
    pyro.clear_param_store()


def test_gmvae_under_torchrun_is_refused_on_every_rank(tmp_path, capsys, monkeypatch):
    # rank 0 would run the pretraining recipe while the others ran plain SVI: refused at once,
    # before any rank joins the process group or writes
    for rank in ("0", "1"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        code = main(["fit", "vae", "--prior", "gmvae", "--out", str(tmp_path / rank), "--quiet"])
        assert code == 2
        err = capsys.readouterr().err
        assert "does not run under torchrun" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / rank).exists()
