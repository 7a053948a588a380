"""Hostile files: every loader ends in a one-line ``ValueError`` naming the file and the problem.

A catalogue of malformed, foreign and hostile inputs for each loader: ``FitResult.load`` (a
saved result folder), checkpoints (``load_checkpoint`` and a resumed ``fit_svi``), the image
loaders (idx folders, binarized-MNIST ``.npz``) and ``ppl_models.data.load``. Each case must
raise ``ValueError`` (``FileNotFoundError`` only where a file is truly absent) with a message
that names the file and says what is wrong, never advises unpickling (``allow_pickle``), and
never lets ``KeyError``, ``TypeError``, ``RuntimeError``, ``UnpicklingError`` or
``BadZipFile`` escape. A subset runs through the command line (exit status exactly 2, one
line on standard error). Last, the JSON written beside a fit holds no bare ``NaN``/``Infinity``.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ppl_models import FitResult, GaussianMixture, fit_em
from ppl_models._shared.jsonsafe import jsonable, to_json
from ppl_models.cli.output import MARKER
from ppl_models.data import load
from ppl_models.images import load_images, read_idx
from ppl_models.infer.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ppl_models.infer.svi import fit_svi
from ppl_models.models import VAE

# --------------------------------------------------------------------------------------------
# sources the hostile files are made from (written once per module)


def _two_clusters(n: int = 40) -> torch.Tensor:
    rng = np.random.default_rng(0)
    z = rng.random(n) < 0.4
    return torch.as_tensor(
        np.where(z[:, None], rng.normal(size=(n, 2)) - 3.0, rng.normal(size=(n, 2)) + 3.0)
    )


def _svi_settings(directory: Path) -> dict[str, Any]:
    return {"guide": "map", "num_steps": 4, "checkpoint_every": 2, "checkpoint_dir": directory,
            "progress": False, "seed": 1}


@dataclass(frozen=True)
class Sources:
    gmm: Path  # a saved EM fit of a 2-component diagonal GMM
    vae: Path  # a saved VAE result (networks' weights in ``state``)
    checkpoint: Path  # a folder holding the checkpoint of a 4-step full-batch SVI fit
    data: torch.Tensor


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    root = tmp_path_factory.mktemp("sources")
    x = _two_clusters()
    gmm = fit_em(GaussianMixture(2, "diag"), x, seed=0).save(root / "gmm")
    model = VAE(6, 2, hidden=(8,))
    binary = (torch.rand(12, 6, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    vae = FitResult(
        model=model, method="svi", data=binary, params={}, draws=None,
        history={"elbo": [-3.0]}, converged=True, n_iter=1, seed=0, fit_seconds=0.1,
    ).save(root / "vae")
    fit_svi(GaussianMixture(2, "diag"), x, **_svi_settings(root / "checkpoint"))
    return Sources(gmm, vae, root / "checkpoint", x)


class Payload:
    """A pickled object that would run a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------------------------
# the catalogue: name -> (make(tmp, sources) -> thunk that loads, words the message must hold)

Make = Callable[[Path, Sources], Callable[[], Any]]
_BROKEN = r"(truncated|holds objects|not a tensor file)"
PT_CORRUPT = rf"corrupt fit result .*tensors\.pt: {_BROKEN}"
CHECKPOINT_CORRUPT = rf"corrupt checkpoint .*checkpoint\.pt: {_BROKEN}"
CASES: dict[str, tuple[Make, str, type[Exception]]] = {}


def case(name: str, match: str, error: type[Exception] = ValueError) -> Callable[[Make], Make]:
    """Register a hostile case; ``error`` is ValueError but for files that are truly absent."""
    def register(make: Make) -> Make:
        assert name not in CASES, name
        CASES[name] = (make, match, error)
        return make
    return register


# ---- FitResult.load -------------------------------------------------------------------------
def _result_copy(tmp: Path, src: Path) -> Path:
    folder = tmp / "fit"
    shutil.copytree(src, folder)
    return folder


def _json_edit(edit: Callable[[dict], Any], source: str = "gmm") -> Make:
    def make(tmp: Path, s: Sources) -> Callable[[], Any]:
        folder = _result_copy(tmp, getattr(s, source))
        meta = json.loads((folder / "result.json").read_text())
        edit(meta)
        (folder / "result.json").write_text(json.dumps(meta))
        return lambda: FitResult.load(folder)
    return make


def _tensor_edit(edit: Callable[[dict], Any], source: str = "gmm") -> Make:
    def make(tmp: Path, s: Sources) -> Callable[[], Any]:
        folder = _result_copy(tmp, getattr(s, source))
        tensors = torch.load(folder / "tensors.pt", weights_only=True)
        edit(tensors)
        torch.save(tensors, folder / "tensors.pt")
        return lambda: FitResult.load(folder)
    return make


def _file_content(name: str, content: Callable[[bytes], bytes | None]) -> Make:
    """Replace ``name`` in the result folder by ``content(old bytes)`` (None: remove it)."""
    def make(tmp: Path, s: Sources) -> Callable[[], Any]:
        folder = _result_copy(tmp, s.gmm)
        new = content((folder / name).read_bytes())
        (folder / name).unlink()
        if new is not None:
            (folder / name).write_bytes(new)
        return lambda: FitResult.load(folder)
    return make


for _name, _file, _content, _match in [
    ("json-empty", "result.json", lambda b: b"", r"result\.json.*(empty|Expecting)"),
    ("json-syntax", "result.json", lambda b: b"{not json", r"result\.json.*Expecting"),
    ("json-truncated", "result.json", lambda b: b[: len(b) // 2], r"result\.json.*corrupt"),
    ("json-binary", "result.json", lambda b: bytes(range(256)) * 4, r"result\.json.*UTF-8"),
    ("json-latin1", "result.json", lambda b: b.replace(b'"diag"', '"di\xe4g"'.encode("latin-1")),
     r"result\.json.*UTF-8"),
    ("json-utf16", "result.json", lambda b: b.decode().encode("utf-16"), r"result\.json"),
    ("json-bom", "result.json", lambda b: b"\xef\xbb\xbf" + b, r"result\.json.*BOM"),
    ("json-list", "result.json", lambda b: b'["a", "list"]', "not a ppl-models fit result"),
    ("json-deep", "result.json", lambda b: b"[" * 200_000 + b"]" * 200_000,
     r"result\.json.*nested"),
    ("json-missing-keys", "result.json", lambda b: b'{"format": "ppl-models/fit-result/1"}',
     r"missing \['columns'"),
    ("pt-empty", "tensors.pt", lambda b: b"", PT_CORRUPT),
    ("pt-garbage", "tensors.pt", lambda b: b"not a torch file" * 8, PT_CORRUPT),
    ("pt-broken-zip", "tensors.pt", lambda b: b"PK\x03\x04 broken", PT_CORRUPT),
    ("pt-truncated", "tensors.pt", lambda b: b[: len(b) // 2], PT_CORRUPT),
    ("pt-truncated-tail", "tensors.pt", lambda b: b[:-30], PT_CORRUPT),
    ("pt-text", "tensors.pt", lambda b: b'{"data": [1, 2]}', PT_CORRUPT),
]:
    case(f"result/{_name}", _match)(_file_content(_file, _content))


@case("result/missing-folder", r"no saved fit result in .*nowhere", FileNotFoundError)
def _missing_folder(tmp: Path, s: Sources):
    return lambda: FitResult.load(tmp / "nowhere")


@case("result/missing-tensors", r"tensors\.pt: missing \(no saved fit result in", FileNotFoundError)
def _missing_tensors(tmp: Path, s: Sources):
    folder = _result_copy(tmp, s.gmm)
    (folder / "tensors.pt").unlink()
    return lambda: FitResult.load(folder)


@case("result/folder-is-a-file", r"nowhere.*not a folder")
def _folder_is_a_file(tmp: Path, s: Sources):
    (tmp / "nowhere").write_text("x")
    return lambda: FitResult.load(tmp / "nowhere")


@case("result/json-is-a-directory", r"result\.json.*is a directory")
def _json_directory(tmp: Path, s: Sources):
    folder = _result_copy(tmp, s.gmm)
    (folder / "result.json").unlink()
    (folder / "result.json").mkdir()
    return lambda: FitResult.load(folder)


@case("result/pt-is-a-directory", r"tensors\.pt.*is a directory")
def _pt_directory(tmp: Path, s: Sources):
    folder = _result_copy(tmp, s.gmm)
    (folder / "tensors.pt").unlink()
    (folder / "tensors.pt").mkdir()
    return lambda: FitResult.load(folder)


@case("result/json-symlink-loop", r"result\.json.*symbolic links")
def _json_loop(tmp: Path, s: Sources):
    folder = _result_copy(tmp, s.gmm)
    (folder / "result.json").unlink()
    (folder / "result.json").symlink_to(folder / "result.json")
    return lambda: FitResult.load(folder)


@case("result/pt-symlink-loop", r"tensors\.pt.*symbolic links")
def _pt_loop(tmp: Path, s: Sources):
    folder = _result_copy(tmp, s.gmm)
    (folder / "tensors.pt").unlink()
    (folder / "tensors.pt").symlink_to(folder / "tensors.pt")
    return lambda: FitResult.load(folder)


@case("result/json-is-a-pipe", r"result\.json: not a regular file")
def _json_fifo(tmp: Path, s: Sources):  # reading a pipe nobody writes to would wait forever
    folder = _result_copy(tmp, s.gmm)
    (folder / "result.json").unlink()
    os.mkfifo(folder / "result.json")
    return lambda: FitResult.load(folder)


@case("result/json-dangling-link", r"result\.json: a symbolic link to nothing")
def _json_dangling(tmp: Path, s: Sources):
    folder = _result_copy(tmp, s.gmm)
    (folder / "result.json").unlink()
    (folder / "result.json").symlink_to(tmp / "gone.json")
    return lambda: FitResult.load(folder)


@case("result/pt-pickle-payload", r"tensors\.pt: holds objects that are not plain tensors")
def _pickle_payload(tmp: Path, s: Sources):
    folder = _result_copy(tmp, s.gmm)
    marker = tmp / "pwned"
    tensors = torch.load(folder / "tensors.pt", weights_only=True)
    tensors["info"] = Payload(marker)
    torch.save(tensors, folder / "tensors.pt")

    def thunk():
        try:
            return FitResult.load(folder)
        finally:
            assert not marker.exists(), "the payload ran"
    return thunk


@case("result/pt-path-object", r"tensors\.pt: holds objects that are not plain tensors")
def _path_object(tmp: Path, s: Sources):
    folder = _result_copy(tmp, s.gmm)
    torch.save({"params": {}, "payload": Path("x")}, folder / "tensors.pt")
    return lambda: FitResult.load(folder)


# recorded fields of the wrong type or value
for _name, _edit, _match in [
    ("format-other", lambda m: m.update(format="something-else/2"), "not a ppl-models fit"),
    ("format-null", lambda m: m.update(format=None), "not a ppl-models fit"),
    ("n_iter-string", lambda m: m.update(n_iter="5"), "^n_iter must be"),
    ("n_iter-negative", lambda m: m.update(n_iter=-1), "^n_iter must be"),
    ("converged-int", lambda m: m.update(converged=1), "^converged must be"),
    ("seed-float", lambda m: m.update(seed=1.5), "^seed must be"),
    ("fit_seconds-string", lambda m: m.update(fit_seconds="fast"), "^fit_seconds must be"),
    ("history-list", lambda m: m.update(history=[1.0]), "^history must be"),
    ("history-null-list", lambda m: m.update(history={"elbo": None}), "^history must be"),
    ("history-strings", lambda m: m.update(history={"elbo": ["a"]}), "^history must be"),
    ("columns-ints", lambda m: m.update(columns=[1, 2]), "^columns must be"),
    ("columns-too-many", lambda m: m.update(columns=["a", "b", "c"]), "columns names 3"),
    ("info-list", lambda m: m.update(info=[]), "^info must be"),
    ("method-null", lambda m: m.update(method=None), "^method must be"),
    ("method-unknown", lambda m: m.update(method="rm -rf"), "^method must be one of"),
    ("model-string", lambda m: m.update(model="gmm"), "^model must be"),
    ("model-name-list", lambda m: m["model"].update(name=["gmm"]), "^model.name must be"),
    ("model-unknown", lambda m: m["model"].update(name="hidden_markov"), "unknown model"),
    ("config-list", lambda m: m["model"].update(config=[1]), "^model.config must be"),
    ("config-extra", lambda m: m["model"]["config"].update(bogus=1), "model.config"),
    ("config-missing", lambda m: m["model"]["config"].pop("covariance_type"),
     "n_components or covariance_type differ"),
    ("config-k-string", lambda m: m["model"]["config"].update(n_components="2"), "model.config"),
    ("config-k-zero", lambda m: m["model"]["config"].update(n_components=0), "n_components"),
    ("config-k-other", lambda m: m["model"]["config"].update(n_components=3), "n_components"),
    ("config-k-huge", lambda m: m["model"]["config"].update(n_components=10**12),
     "n_components.*exceeds"),
    ("config-k-bigint", lambda m: m["model"]["config"].update(n_components=10**400),
     "n_components.*exceeds"),
    ("config-k-float", lambda m: m["model"]["config"].update(n_components=2.0), "n_components"),
    ("config-k-inf", lambda m: m["model"]["config"].update(n_components=math.inf),
     "n_components"),
    ("config-cov-unknown", lambda m: m["model"]["config"].update(covariance_type="banana"),
     "covariance"),
    ("priors-list", lambda m: m["model"].update(priors=[]), "model.priors"),
    ("priors-no-tensors", lambda m: m["model"].update(priors={"locs": {"distribution": "Normal"}}),
     r"model.priors\['locs'\]"),
    ("priors-fixed-no-tensors", lambda m: m["model"].update(priors={"locs": {"fixed": True}}),
     r"model.priors\['locs'\]"),
    ("priors-not-saved-string", lambda m: m.update(priors_not_saved="weights"),
     "^priors_not_saved must be"),
]:
    case(f"result/{_name}", _match)(_json_edit(_edit))

for _name, _edit, _match in [
    ("vae-hidden-huge", lambda m: m["model"]["config"].update(hidden=[10**9]),
     "hidden.*exceeds"),
    ("vae-input-huge", lambda m: m["model"]["config"].update(input_dim=10**10),
     "input_dim.*exceeds"),
    ("vae-latent-huge", lambda m: m["model"]["config"].update(latent_dim=10**8),
     "latent_dim.*exceeds"),
    ("vae-prior-unknown", lambda m: m["model"]["config"]["prior"].update(name="os.system"),
     "unknown latent prior"),
    ("vae-hidden-string", lambda m: m["model"]["config"].update(hidden="8"), "hidden"),
    ("vae-hidden-other", lambda m: m["model"]["config"].update(hidden=[9]), r"state\["),
]:
    case(f"result/{_name}", _match)(_json_edit(_edit, "vae"))


def _lkj_prior(dim: torch.Tensor) -> Make:
    """A result whose saved LKJ prior has ``dim`` (its size grows with dim)."""
    def make(tmp: Path, s: Sources):
        folder = _result_copy(tmp, s.gmm)
        meta = json.loads((folder / "result.json").read_text())
        meta["model"]["priors"] = {"corr_chol": {"distribution": "LKJCholesky"}}
        (folder / "result.json").write_text(json.dumps(meta))
        tensors = torch.load(folder / "tensors.pt", weights_only=True)
        tensors["priors"] = {"corr_chol": {"dim": dim, "concentration": torch.tensor(1.0)}}
        torch.save(tensors, folder / "tensors.pt")
        return lambda: FitResult.load(folder)
    return make


for _name, _dim, _match in [
    ("priors-lkj-huge-dim", torch.tensor(10**9),
     r"LKJCholesky dim must be .* at most 40 .*; got 1000000000"),
    ("priors-lkj-dim-float", torch.tensor(2.5), r"LKJCholesky dim must be one positive integer"),
    ("priors-lkj-dim-vector", torch.tensor([2, 2]), r"LKJCholesky dim must be .*shape \(2,\)"),
    ("priors-huge-declared", torch.zeros(1, dtype=torch.int64).as_strided((10**12,), (0,)),
     r"priors\['corr_chol'\]\['dim'\] declares shape"),
]:
    case(f"result/{_name}", _match)(_lkj_prior(_dim))


def _strided(shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor declaring ``shape`` over a storage of one element (stride 0)."""
    return torch.zeros(1, dtype=torch.float64).as_strided(shape, (0,) * len(shape))


# tensors of the wrong type, shape, dtype or value
for _name, _edit, _match in [
    ("tensors-list", lambda t: t.clear() or t.update(x=1), r"missing|tensors"),
    ("params-list", lambda t: t.update(params=[1]), "^params must be"),
    ("params-int", lambda t: t.update(params=3), "^params must be"),
    ("draws-string-key", lambda t: t.update(draws={1: torch.zeros(2)}), "^draws must be"),
    ("data-1d", lambda t: t.update(data=torch.zeros(3)), r"^data must be a tensor \(N, D\)"),
    ("data-list", lambda t: t.update(data=[[1.0]]), r"^data must be a tensor"),
    ("data-empty", lambda t: t.update(data=torch.zeros(0, 2, dtype=torch.float64)),
     "data.*empty"),
    ("data-int", lambda t: t.update(data=t["data"].long()), "data.*floating"),
    ("data-complex", lambda t: t.update(data=t["data"].to(torch.complex128)), "data.*floating"),
    ("data-nan", lambda t: t["data"].view(-1).__setitem__(0, math.nan), "data.*non-finite"),
    ("data-inf", lambda t: t["data"].view(-1).__setitem__(3, -math.inf), "data.*non-finite"),
    ("data-huge-declared", lambda t: t.update(data=_strided((10**6, 10**6))),
     r"data declares shape .*1000000.*bytes"),
    ("params-huge-declared", lambda t: t["params"].update(locs=_strided((10**7, 10**7))),
     r"params\['locs'\] declares shape"),
    ("data-sparse", lambda t: t.update(data=t["data"].to_sparse()), "data.*dense"),
    ("params-nan", lambda t: t["params"]["locs"].view(-1).__setitem__(0, math.nan),
     r"params\['locs'\].*non-finite"),
    ("params-shape", lambda t: t["params"].update(locs=torch.zeros(2, 3, dtype=torch.float64)),
     r"params\['locs'\] has shape"),
    ("params-scalar", lambda t: t["params"].update(locs=torch.tensor(1.0)),
     r"params\['locs'\] has shape"),
    ("params-missing-site", lambda t: t["params"].pop("locs"), "no values for"),
    ("params-foreign-site", lambda t: t["params"].update(extra=torch.zeros(2)), "another model"),
    ("params-weights-off-simplex",
     lambda t: t["params"].update(weights=torch.tensor([2.0, -1.0], dtype=torch.float64)),
     r"params\['weights'\].*support"),
    ("params-scale-negative",
     lambda t: t["params"].update(scale=-t["params"]["scale"]), r"params\['scale'\].*support"),
    ("state-foreign", lambda t: t.update(state={"encoder.weight": torch.zeros(2)}),
     "another model"),
    ("priors-bad-arg", lambda t: t.update(priors={"locs": {"loc": "x"}}), "model.priors"),
    ("priors-tensor-list", lambda t: t.update(priors=[1]), "^priors must be"),
]:
    case(f"result/{_name}", _match)(_tensor_edit(_edit))

for _name, _edit, _match in [
    ("vae-state-shape", lambda t: t["state"].update(
        {k: torch.zeros(1) for k in list(t["state"])[:1]}), r"state\[.*has shape"),
    ("vae-state-missing", lambda t: t["state"].pop(next(iter(t["state"]))), "state: the weights"),
    ("vae-state-nan", lambda t: next(iter(t["state"].values())).view(-1).__setitem__(0, math.nan),
     r"state\[.*non-finite"),
    ("vae-state-int", lambda t: t["state"].update(
        {k: v.long() for k, v in t["state"].items()}), r"state\[.*floating"),
    ("vae-params-foreign", lambda t: t["params"].update(locs=torch.zeros(2)), "another model"),
]:
    case(f"result/{_name}", _match)(_tensor_edit(_edit, "vae"))


# ---- checkpoints ----------------------------------------------------------------------------
def _checkpoint_copy(tmp: Path, s: Sources) -> Path:
    folder = tmp / "checkpoint"
    shutil.copytree(s.checkpoint, folder)
    return folder


def _checkpoint_bytes(content: Callable[[bytes], bytes]) -> Make:
    def make(tmp: Path, s: Sources):
        folder = _checkpoint_copy(tmp, s)
        file = folder / CHECKPOINT_NAME
        file.write_bytes(content(file.read_bytes()))
        return lambda: load_checkpoint(file)
    return make


def _checkpoint_edit(edit: Callable[[dict], Any], resume: bool = False) -> Make:
    """Edit the state; load it (``resume=False``) or continue the fit from it."""
    def make(tmp: Path, s: Sources):
        folder = _checkpoint_copy(tmp, s)
        file = folder / CHECKPOINT_NAME
        state = torch.load(file, weights_only=True)
        edit(state)
        torch.save(state, file)
        if not resume:
            return lambda: load_checkpoint(file)
        settings = {**_svi_settings(folder), "resume": True}
        return lambda: fit_svi(GaussianMixture(2, "diag"), s.data, **settings)
    return make


for _name, _content in [
    ("empty", lambda b: b""), ("garbage", lambda b: b"\x00\xff" * 100),
    ("truncated", lambda b: b[: len(b) // 2]), ("truncated-tail", lambda b: b[:-30]),
    ("broken-zip", lambda b: b"PK\x03\x04 broken"),
]:
    case(f"checkpoint/{_name}", CHECKPOINT_CORRUPT)(_checkpoint_bytes(_content))


@case("checkpoint/pickle-payload", r"checkpoint\.pt: holds objects that are not plain tensors")
def _checkpoint_payload(tmp: Path, s: Sources):
    folder = _checkpoint_copy(tmp, s)
    marker = tmp / "pwned"
    state = torch.load(folder / CHECKPOINT_NAME, weights_only=True)
    state["extra"] = Payload(marker)
    torch.save(state, folder / CHECKPOINT_NAME)

    def thunk():
        try:
            return load_checkpoint(folder)
        finally:
            assert not marker.exists(), "the payload ran"
    return thunk


@case("checkpoint/is-a-directory", r"checkpoint\.pt.*is a directory")
def _checkpoint_directory(tmp: Path, s: Sources):
    folder = _checkpoint_copy(tmp, s)
    (folder / CHECKPOINT_NAME).unlink()
    (folder / CHECKPOINT_NAME).mkdir()
    return lambda: load_checkpoint(folder / CHECKPOINT_NAME)


@case("checkpoint/is-a-pipe", r"checkpoint\.pt: not a regular file")
def _checkpoint_fifo(tmp: Path, s: Sources):
    folder = _checkpoint_copy(tmp, s)
    (folder / CHECKPOINT_NAME).unlink()
    os.mkfifo(folder / CHECKPOINT_NAME)
    return lambda: load_checkpoint(folder)


@case("checkpoint/symlink-loop", r"checkpoint\.pt.*symbolic links")
def _checkpoint_loop(tmp: Path, s: Sources):
    folder = _checkpoint_copy(tmp, s)
    (folder / CHECKPOINT_NAME).unlink()
    (folder / CHECKPOINT_NAME).symlink_to(folder / CHECKPOINT_NAME)
    return lambda: load_checkpoint(folder)


for _name, _edit, _match in [
    ("not-a-dict", lambda st: st.clear(), "missing"),
    ("missing-rng", lambda st: st.pop("rng"), r"missing \['rng'\]"),
    ("mode-list", lambda st: st.update(mode=["minibatch"]), "mode"),
    ("mode-unknown", lambda st: st.update(mode="quantum"), "mode must be one of"),
    ("epoch-string", lambda st: st.update(epoch="4"), "epoch must be"),
    ("epoch-negative", lambda st: st.update(epoch=-1), "epoch must be"),
    ("seed-string", lambda st: st.update(seed="1"), "seed must be"),
    ("config-list", lambda st: st.update(config=[1]), "config must be"),
    ("history-list", lambda st: st.update(history=[1.0]), "history must be"),
    ("history-strings", lambda st: st.update(history={"elbo": ["x"]}), "history must be"),
    ("param-store-list", lambda st: st.update(param_store=[1]), "param_store must be"),
    ("model-state-tensor", lambda st: st.update(model_state=torch.zeros(2)),
     "model_state must be"),
    ("optimizer-list", lambda st: st.update(optimizer_state=[1]), "optimizer_state must be"),
    ("rng-list", lambda st: st.update(rng=[1]), "rng must be"),
    ("rng-no-pyro", lambda st: st.update(rng={}), r"rng must be a mapping with a 'pyro'"),
    ("rng-torch-float", lambda st: st["rng"]["pyro"].update(torch=torch.zeros(3)),
     r"rng\['pyro'\]\['torch'\]"),
    ("rng-numpy-short", lambda st: st["rng"]["pyro"].update(numpy=("MT19937",)),
     r"rng\['pyro'\]\['numpy'\]"),
    ("rng-random-string", lambda st: st["rng"]["pyro"].update(random="x"),
     r"rng\['pyro'\]\['random'\]"),
    ("param-nan", lambda st: next(iter(st["param_store"].values())).view(-1).__setitem__(
        0, math.nan), r"param_store\[.*non-finite"),
]:
    case(f"checkpoint/{_name}", _match)(_checkpoint_edit(_edit))

for _name, _edit, _match in [
    ("resume-param-shape", lambda st: st["param_store"].update(
        {k: torch.zeros(7) for k in st["param_store"]}), r"checkpoint\.pt: parameter .* shape"),
    ("resume-param-foreign", lambda st: st.update(param_store={"x": torch.zeros(1)}),
     r"checkpoint\.pt: (its Pyro parameters differ|optimizer_state names)"),
    ("resume-optimizer-garbage", lambda st: st.update(optimizer_state={"pyro_optim": {"a": 1}}),
     r"checkpoint\.pt: optimizer_state\['pyro_optim'\]\['a'\]"),
    ("resume-optimizer-missing", lambda st: st.update(optimizer_state={}),
     r"checkpoint\.pt: optimizer_state has no 'pyro_optim'"),
    ("resume-rng-state-bytes", lambda st: st["rng"]["pyro"].update(
        torch=torch.zeros(3, dtype=torch.uint8)), r"checkpoint\.pt: rng\['pyro'\]\['torch'\]"),
    ("resume-numpy-keys", lambda st: st["rng"]["pyro"].update(
        numpy=("MT19937", torch.zeros(3, dtype=torch.int64), 0, 0, 0.0)),
     r"checkpoint\.pt: rng\['pyro'\]\['numpy'\]"),
    ("resume-extra-string", lambda st: st.update(extra={"fit_seconds": "x"}),
     r"checkpoint\.pt: extra must be"),
    ("resume-history-no-elbo", lambda st: st.update(history={"loss": [1.0]}),
     r"checkpoint\.pt: history has no 'elbo'"),
    ("resume-config-changed", lambda st: st["config"].update(lr=123.0),
     r"cannot resume from .*checkpoint\.pt: lr was 123.0"),
]:
    case(f"checkpoint/{_name}", _match)(_checkpoint_edit(_edit, resume=True))


# ---- image loaders --------------------------------------------------------------------------
def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + (
        array.astype(">u1" if code == 0x08 else array.dtype).tobytes()
    )


_IMAGES = np.zeros((3, 28, 28), np.uint8)
_LABELS = np.arange(3, dtype=np.uint8)


def _mnist_folder(images: bytes | None = None, labels: bytes | None = None,
                  gz: bool = False) -> Make:
    def make(tmp: Path, s: Sources):
        folder = tmp / "mnist"
        folder.mkdir()
        suffix = ".gz" if gz else ""
        pairs = [("train-images-idx3-ubyte", images if images is not None else _idx(_IMAGES)),
                 ("train-labels-idx1-ubyte", labels if labels is not None else _idx(_LABELS))]
        for name, blob in pairs:
            (folder / (name + suffix)).write_bytes(blob)
        return lambda: load_images(f"mnist:{folder}", split="train")
    return make


for _name, _make, _match in [
    ("idx-wrong-magic", _mnist_folder(images=b"\x12\x34\x56\x78" + bytes(100)),
     r"train-images-idx3-ubyte: not an idx file"),
    ("idx-empty", _mnist_folder(images=b""), r"train-images-idx3-ubyte: not an idx file"),
    ("idx-truncated-header", _mnist_folder(images=b"\x00\x00\x08\x03\x00\x00"),
     "truncated idx header"),
    ("idx-truncated-data", _mnist_folder(images=_idx(_IMAGES)[:-7]), "truncated or corrupt"),
    ("idx-huge-declared", _mnist_folder(
        images=bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1)),
     "truncated or corrupt"),
    ("idx-255-dims", _mnist_folder(images=bytes([0, 0, 8, 255]) + b"\xff" * 1020 + b"\x00"),
     r"train-images-idx3-ubyte"),
    ("idx-labels-count", _mnist_folder(labels=_idx(np.arange(2, dtype=np.uint8))),
     "expected 3 labels"),
    ("idx-images-1d", _mnist_folder(images=_idx(np.zeros(5, np.uint8))),
     r"expected unsigned-byte images of shape \(N, rows, cols\)"),
    ("idx-images-float", _mnist_folder(images=_idx(np.zeros((3, 2, 2), ">f4"), 0x0D)),
     "expected unsigned-byte images"),
    ("idx-labels-2d", _mnist_folder(labels=_idx(np.zeros((3, 2), np.uint8))), "labels"),
    ("gz-garbage", _mnist_folder(images=b"\x1f\x8b garbage", gz=True), "not a readable gzip"),
    ("gz-truncated", _mnist_folder(images=gzip.compress(_idx(_IMAGES))[:-12], gz=True),
     "not a readable gzip"),
    ("gz-of-garbage", _mnist_folder(images=gzip.compress(b"\x01" * 50), gz=True),
     "not an idx file"),
    ("gz-huge-declared", _mnist_folder(images=gzip.compress(
        bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 2**16, 2**16)), gz=True),
     "more than a gzip file of"),
    ("gz-bomb", _mnist_folder(images=gzip.compress(_idx(np.zeros((1, 28, 28), np.uint8))
                                                   + bytes(5_000_000)), gz=True),
     "truncated or corrupt"),
    ("gz-header-truncated", _mnist_folder(images=gzip.compress(b"\x00\x00\x08\x03\x00"),
                                          gz=True), "truncated idx header"),
]:
    case(f"images/{_name}", _match)(_make)


@case("images/idx-is-a-directory", r"train-images-idx3-ubyte.*is a directory")
def _idx_directory(tmp: Path, s: Sources):
    thunk = _mnist_folder()(tmp, s)
    (tmp / "mnist" / "train-images-idx3-ubyte").unlink()
    (tmp / "mnist" / "train-images-idx3-ubyte").mkdir()
    return thunk


@case("images/idx-symlink-loop", r"train-images-idx3-ubyte.*symbolic links")
def _idx_loop(tmp: Path, s: Sources):
    thunk = _mnist_folder()(tmp, s)
    link = tmp / "mnist" / "train-images-idx3-ubyte"
    link.unlink()
    link.symlink_to(link)
    return thunk


@case("images/read-idx-is-a-directory", r"idx.*is a directory")
def _read_idx_directory(tmp: Path, s: Sources):
    (tmp / "x.idx").mkdir()
    return lambda: read_idx(tmp / "x.idx")


def _binarized(write: Callable[[Path], Any], split: str = "train") -> Make:
    def make(tmp: Path, s: Sources):
        path = tmp / "binarized.npz"
        write(path)
        return lambda: load_images(f"binarized-mnist:{path}", split=split)
    return make


def _npz(**arrays) -> Callable[[Path], Any]:
    def write(path: Path) -> None:
        with path.open("wb") as fh:
            np.savez(fh, **arrays)
    return write


_PIXELS = np.zeros((2, 784), np.uint8)
_GOOD = {"train": _PIXELS, "valid": _PIXELS, "test": _PIXELS}
_OBJECTS = np.empty(2, dtype=object)
_OBJECTS[:] = [np.zeros(784), np.ones(784)]


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = __import__("io").BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _truncated_npz(path: Path) -> None:
    _npz(**_GOOD)(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _corrupt_member(path: Path) -> None:
    _npz(**_GOOD)(path)
    blob = bytearray(path.read_bytes())
    start = blob.index(b"\x93NUMPY", blob.index(b"train.npy"))
    blob[start + 10: start + 60] = b"\xff" * 50  # the header of 'train' destroyed
    path.write_bytes(bytes(blob))


for _name, _write, _match in [
    ("text-not-npz", lambda p: p.write_text("train,valid,test\n1,2,3\n"),
     r"binarized\.npz: not a readable \.npz archive"),
    ("empty", lambda p: p.write_bytes(b""), r"binarized\.npz: not a readable \.npz archive"),
    ("pickle", lambda p: p.write_bytes(b"\x80\x04K\x01."), r"binarized\.npz: not a readable"),
    ("npy-not-npz", lambda p: p.write_bytes(_npy_bytes(_PIXELS)), r"binarized\.npz.*single \.npy"),
    ("truncated", _truncated_npz, r"binarized\.npz.*(corrupt|truncated|readable)"),
    ("corrupt-member", _corrupt_member, r"binarized\.npz.*'train'"),
    ("object-array", _npz(train=_OBJECTS, valid=_PIXELS, test=_PIXELS),
     r"binarized\.npz.*'train'.*object"),
    ("object-labels", _npz(**_GOOD, train_labels=_OBJECTS), r"binarized\.npz.*train_labels"),
    ("string-labels", _npz(**_GOOD, train_labels=np.array(["a", "b"])),
     r"binarized\.npz.*train_labels.*integer"),
    ("missing-arrays", _npz(train=_PIXELS), r"binarized\.npz.*missing \['test', 'valid'\]"),
    ("shape", _npz(train=np.zeros((2, 10), np.uint8), valid=_PIXELS, test=_PIXELS),
     r"binarized\.npz.*\(N, 784\)"),
    ("values", _npz(train=np.full((2, 784), 0.5), valid=_PIXELS, test=_PIXELS),
     r"binarized\.npz.*only 0 and 1"),
    ("complex", _npz(train=np.zeros((2, 784), complex), valid=_PIXELS, test=_PIXELS),
     r"binarized\.npz.*'train'.*(numeric|real)"),
    ("strings", _npz(train=np.full((2, 784), "1"), valid=_PIXELS, test=_PIXELS),
     r"binarized\.npz.*'train'.*(numeric|real)"),
    ("labels-count", _npz(**_GOOD, train_labels=np.arange(5)), r"one label per image"),
]:
    case(f"images/binarized-{_name}", _match)(_binarized(_write))


@case("images/binarized-is-a-directory", r"binarized\.npz.*is a directory")
def _binarized_directory(tmp: Path, s: Sources):
    (tmp / "binarized.npz").mkdir()
    return lambda: load_images(f"binarized-mnist:{tmp / 'binarized.npz'}")


@case("images/binarized-symlink-loop", r"binarized\.npz.*symbolic links")
def _binarized_loop(tmp: Path, s: Sources):
    (tmp / "binarized.npz").symlink_to(tmp / "binarized.npz")
    return lambda: load_images(f"binarized-mnist:{tmp / 'binarized.npz'}")


# ---- ppl_models.data.load -------------------------------------------------------------------
def _data_file(name: str, write: Callable[[Path], Any], **kwargs) -> Make:
    def make(tmp: Path, s: Sources):
        path = tmp / name
        write(path)
        return lambda: load(path, **kwargs)
    return make


_CSV = "a,b\n1,2\n3,4\n"
for _name, _file, _write, _match in [
    ("csv-binary", "x.csv", lambda p: p.write_bytes(bytes(range(256)) * 8),
     r"x\.csv: could not parse"),
    ("csv-nul", "x.csv", lambda p: p.write_bytes(b"a,b\n1,\x002\n"), r"x\.csv.*NUL"),
    ("csv-empty", "x.csv", lambda p: p.write_bytes(b""), r"x\.csv: data are empty"),
    ("csv-newlines-only", "x.csv", lambda p: p.write_bytes(b"\n\n\n"), r"x\.csv.*empty"),
    ("csv-latin1", "x.csv", lambda p: p.write_bytes("caf\xe9,b\n1,2\n".encode("latin-1")),
     r"x\.csv.*(?i:utf-8)"),
    ("csv-utf16", "x.csv", lambda p: p.write_bytes(_CSV.encode("utf-16")), r"x\.csv"),
    ("csv-header-only", "x.csv", lambda p: p.write_text("a,b\n"), r"x\.csv: data are empty"),
    ("csv-text-cell", "x.csv", lambda p: p.write_text("a,b\n1,2\n3,x\n"),
     r"x\.csv.*column 'b'.*row"),
    ("csv-ragged", "x.csv", lambda p: p.write_text("a,b\n1,2,3\n4,5\n"), r"x\.csv"),
    ("csv-nan", "x.csv", lambda p: p.write_text("a,b\n1,nan\n3,4\n"), r"x\.csv.*NaN"),
    ("csv-huge-number", "x.csv", lambda p: p.write_text("a,b\n1,1e999\n3,4\n"),
     r"x\.csv.*(infinite|overflow)"),
    ("npz-garbage", "x.npz", lambda p: p.write_bytes(b"\x00garbage" * 20), r"x\.npz"),
    ("npz-empty", "x.npz", lambda p: p.write_bytes(b""), r"x\.npz"),
    ("npz-pickle", "x.npz", lambda p: p.write_bytes(b"\x80\x04K\x01."), r"x\.npz"),
    ("npz-truncated", "x.npz", _truncated_npz, r"x\.npz"),
    ("npz-object-array", "x.npz", _npz(x=_OBJECTS), r"x\.npz.*'x'.*object"),
    ("npz-strings", "x.npz", _npz(x=np.array([["a"]])), r"x\.npz.*not numeric"),
    ("npz-3d", "x.npz", _npz(x=np.zeros((2, 2, 2))), r"x\.npz.*shape"),
    ("npz-no-arrays", "x.npz", _npz(), r"x\.npz: data are empty"),
]:
    case(f"data/{_name}", _match)(_data_file(_file, _write))


case("data/npz-corrupt-member", r"x\.npz.*'train'")(
    _data_file("x.npz", _corrupt_member, key="train"))


@case("data/csv-bom", r"^$")  # a BOM is read as UTF-8's: no error, the header is clean
def _csv_bom(tmp: Path, s: Sources):
    path = tmp / "x.csv"
    path.write_bytes(b"\xef\xbb\xbf" + _CSV.encode())

    def thunk():
        x, names = load(path)
        if names == ["a", "b"] and x.tolist() == [[1.0, 2.0], [3.0, 4.0]]:
            raise ValueError("")  # read right: end like the others so one test covers all
        raise AssertionError(f"BOM file read as {names}, {x.tolist()}")
    return thunk


@case("data/csv-is-a-directory", r"x\.csv: is a directory, not a file", FileNotFoundError)
def _csv_directory(tmp: Path, s: Sources):
    (tmp / "x.csv").mkdir()
    return lambda: load(tmp / "x.csv")


@case("data/csv-symlink-loop", r"x\.csv.*symbolic links")
def _csv_loop(tmp: Path, s: Sources):
    (tmp / "x.csv").symlink_to(tmp / "x.csv")
    return lambda: load(tmp / "x.csv")


@case("data/csv-is-a-pipe", r"x\.csv: not a regular file")
def _csv_fifo(tmp: Path, s: Sources):
    os.mkfifo(tmp / "x.csv")
    return lambda: load(tmp / "x.csv")


@case("images/idx-is-a-pipe", r"train-images-idx3-ubyte: not a regular file")
def _idx_fifo(tmp: Path, s: Sources):
    thunk = _mnist_folder()(tmp, s)
    (tmp / "mnist" / "train-images-idx3-ubyte").unlink()
    os.mkfifo(tmp / "mnist" / "train-images-idx3-ubyte")
    return thunk


@case("data/npz-symlink-loop", r"x\.npz.*symbolic links")
def _npz_loop(tmp: Path, s: Sources):
    (tmp / "x.npz").symlink_to(tmp / "x.npz")
    return lambda: load(tmp / "x.npz")


# --------------------------------------------------------------------------------------------
# the test over the catalogue

FORBIDDEN = ("allow_pickle", "unpickl", "weights_only=False", "Traceback")


def test_catalogue_size() -> None:
    assert len(CASES) >= 198  # the count quoted in the report; the catalogue must not shrink


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_file_ends_in_one_line_value_error(name: str, tmp_path: Path,
                                                   sources: Sources) -> None:
    make, match, error = CASES[name]
    thunk = make(tmp_path, sources)
    with pytest.raises(error, match=match) as info:
        thunk()
    message = str(info.value)
    assert "\n" not in message.strip(), message
    assert not any(word.lower() in message.lower() for word in FORBIDDEN), message
    assert type(info.value) is error, type(info.value)  # not a subclass leaking through


# --------------------------------------------------------------------------------------------
# the same files through the command line: exit status 2 and one line on standard error

def _gmm_data(tmp: Path, name: str, write: Callable[[Path], Any]) -> list[str]:
    path = tmp / name
    write(path)
    return ["fit", "gmm", "--data", str(path)]


def _vae_source(tmp: Path, source: Callable[[Path], str]) -> list[str]:
    return ["fit", "vae", "--data", source(tmp), "--epochs", "1"]


def _mnist_dir(tmp: Path) -> str:
    _mnist_folder(images=b"\x12\x34\x56\x78" + bytes(100))(tmp, None)
    return f"mnist:{tmp / 'mnist'}"


def _binarized_source(write: Callable[[Path], Any]) -> Callable[[Path], str]:
    def source(tmp: Path) -> str:
        write(tmp / "b.npz")
        return f"binarized-mnist:{tmp / 'b.npz'}"
    return source


def _loop(path: Path) -> None:
    path.symlink_to(path)


CLI_CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "csv-binary": (lambda t: _gmm_data(t, "x.csv", lambda p: p.write_bytes(bytes(range(256)))),
                   r"x\.csv: could not parse"),
    "csv-latin1": (lambda t: _gmm_data(t, "x.csv", lambda p: p.write_bytes(b"caf\xe9,b\n1,2\n")),
                   r"x\.csv"),
    "csv-directory": (lambda t: _gmm_data(t, "x.csv", Path.mkdir), r"x\.csv: is a directory"),
    "csv-symlink-loop": (lambda t: _gmm_data(t, "x.csv", _loop), r"x\.csv.*symbolic links"),
    "npz-object-array": (lambda t: _gmm_data(t, "x.npz", _npz(x=_OBJECTS)), r"x\.npz.*object"),
    "npz-truncated": (lambda t: _gmm_data(t, "x.npz", _truncated_npz), r"x\.npz"),
    "mnist-wrong-magic": (lambda t: _vae_source(t, _mnist_dir), "not an idx file"),
    "binarized-text": (lambda t: _vae_source(t, _binarized_source(lambda p: p.write_text("x"))),
                       r"b\.npz: not a readable \.npz archive"),
    "binarized-objects": (
        lambda t: _vae_source(t, _binarized_source(
            _npz(train=_OBJECTS, valid=_PIXELS, test=_PIXELS))),
        r"b\.npz: array 'train' holds Python objects"),
}


def _resume_from(content: Callable[[bytes], bytes]) -> Callable[[Path], list[str]]:
    """``fit vae --resume`` whose ``--out/checkpoint`` holds a damaged checkpoint."""
    def args(tmp: Path) -> list[str]:
        folder = tmp / "out" / "checkpoint"
        folder.mkdir(parents=True)
        (tmp / "out" / MARKER).touch()  # a folder the command wrote
        (folder / CHECKPOINT_NAME).write_bytes(content(b""))
        return ["fit", "vae", "--data", "digits", "--epochs", "1", "--resume"]
    return args


def _payload_bytes(marker: Path) -> bytes:
    buffer = __import__("io").BytesIO()
    torch.save({"mode": Payload(marker)}, buffer)
    return buffer.getvalue()


CLI_CASES["checkpoint-garbage"] = (_resume_from(lambda b: b"\x00garbage" * 10),
                                   CHECKPOINT_CORRUPT)


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_hostile_input_through_the_cli_exits_2_with_one_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ppl_models.cli import main

    make, match = CLI_CASES[name]
    argv = [*make(tmp_path), "--out", str(tmp_path / "out"), "--quiet"]
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ppl-models: error: ")
    assert __import__("re").search(match, lines[0]), lines[0]
    assert not any(word.lower() in lines[0].lower() for word in FORBIDDEN), lines[0]


def test_pickled_code_in_a_checkpoint_is_refused_by_the_command_without_running(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    marker = tmp_path / "pwned"
    args = _resume_from(lambda b: _payload_bytes(marker))(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "ppl_models", *args, "--out", str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "checkpoint.pt: holds objects that are not plain tensors" in lines[0]
    assert "posix.system" in lines[0] or "os.system" in lines[0]
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# JSON beside a fit: strict, no bare NaN or Infinity


def _strict(text: str) -> Any:
    def refuse(token: str) -> None:
        raise ValueError(f"bare {token} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_writer_turns_nested_non_finite_values_into_null() -> None:
    value = {
        "a": math.nan, "b": [1.0, -math.inf, {"c": (math.inf, 2)}],
        "t": torch.tensor([[1.0, math.nan]]), "n": np.array([np.inf, 3.5]),
        "s": np.float32("nan"), 4: {"deep": [[[[math.nan]]]]},
    }
    text = to_json(value)
    expected = {
        "a": None, "b": [1.0, None, {"c": [None, 2]}], "t": [[1.0, None]], "n": [None, 3.5],
        "s": None, "4": {"deep": [[[[None]]]]},
    }
    assert _strict(text) == expected  # json.dumps of the hand-written answer, read back
    assert jsonable(value)[4] == expected["4"]
    for token in ("NaN", "Infinity"):
        assert token not in text


def test_json_writer_refuses_what_it_cannot_write() -> None:
    with pytest.raises(TypeError, match="cannot write a object"):
        to_json({"x": object()})


def test_one_chain_nuts_result_json_is_strict(tmp_path: Path) -> None:
    from ppl_models.infer import fit_mcmc

    x, _ = load("faithful", standardize=True)
    result = fit_mcmc(GaussianMixture(1, "diag"), x[:30], num_samples=20, warmup_steps=20,
                      num_chains=1, progress=False, seed=0)
    folder = result.save(tmp_path / "fit")
    text = (folder / "result.json").read_text()
    meta = _strict(text)  # raises on a bare NaN / Infinity
    # the single chain's R-hat is undefined: None in the result and null in the file
    assert result.info["max_r_hat"] is None and meta["info"]["max_r_hat"] is None
    loaded = FitResult.load(folder)
    assert loaded.n_iter == result.n_iter == 20
    torch.testing.assert_close(loaded.draws["locs"], result.draws["locs"], rtol=0, atol=0)


def test_non_finite_history_round_trips_as_nan(tmp_path: Path, sources: Sources) -> None:
    loaded = FitResult.load(sources.gmm)
    import dataclasses

    diverged = dataclasses.replace(loaded, history={"log_likelihood": [-3.0, math.nan, -math.inf]})
    folder = diverged.save(tmp_path / "fit")
    assert _strict((folder / "result.json").read_text())["history"] == {
        "log_likelihood": [-3.0, None, None]}
    back = FitResult.load(folder).history["log_likelihood"]
    assert back[0] == -3.0 and math.isnan(back[1]) and math.isnan(back[2])


def test_a_failed_save_raises_os_error_naming_the_file(tmp_path: Path, sources: Sources) -> None:
    # PyTorch's own writer would raise RuntimeError here; the CLI turns OSError into exit 2
    result = FitResult.load(sources.gmm)
    folder = tmp_path / "fit"
    (folder / "tensors.pt").mkdir(parents=True)
    with pytest.raises(OSError, match=r"tensors\.pt"):
        result.save(folder)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="file"):
        result.save(tmp_path / "file" / "fit")


def test_non_finite_per_draw_statistics_come_back_as_nan(tmp_path: Path, sources: Sources) -> None:
    import dataclasses

    loaded = FitResult.load(sources.gmm)
    info = {"sample_stats": {"energy": [[1.5, math.inf, 2.0]]}, "stopped_by": None,
            "max_r_hat": math.nan}
    folder = dataclasses.replace(loaded, info=info).save(tmp_path / "fit")
    back = FitResult.load(folder).info
    energy = back["sample_stats"]["energy"][0]
    assert energy[0] == 1.5 and math.isnan(energy[1]) and energy[2] == 2.0
    assert back["stopped_by"] is None and back["max_r_hat"] is None  # a lone null stays None
