"""FitResult: code-free saving and loading."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from ppl_models import FitResult, GaussianMixture, StudentTMixture, fit_em, stick_breaking_prior


def two_clusters(n: int = 60, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    z = rng.random(n) < 0.4
    x = np.where(z[:, None], rng.normal(size=(n, 2)) - 3.0, rng.normal(size=(n, 2)) + 3.0)
    return torch.as_tensor(x)


def strict_json(path: Path):
    """json.loads that refuses the NaN/Infinity extensions (not JSON)."""

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def assert_same_result(loaded: FitResult, original: FitResult) -> None:
    assert loaded.method == original.method
    assert torch.equal(loaded.data, original.data)
    assert loaded.data.dtype == original.data.dtype
    assert set(loaded.params) == set(original.params)
    for name, value in original.params.items():
        assert torch.equal(loaded.params[name], value), name
        assert loaded.params[name].dtype == value.dtype
    if original.draws is None:
        assert loaded.draws is None
    else:
        assert set(loaded.draws) == set(original.draws)
        for name, value in original.draws.items():
            assert torch.equal(loaded.draws[name], value)
    assert loaded.history == original.history
    assert loaded.info == original.info
    assert loaded.converged == original.converged
    assert loaded.n_iter == original.n_iter
    assert loaded.seed == original.seed
    assert loaded.fit_seconds == original.fit_seconds
    assert loaded.columns == original.columns
    assert type(loaded.model) is type(original.model)
    assert loaded.model.config() == original.model.config()


# --------------------------------------------------------------------------------------------
# round trips


def test_round_trip_of_a_fit_with_distribution_priors(tmp_path: Path) -> None:
    priors = {
        "weights": dist.Dirichlet(torch.tensor([2.0, 3.0])),
        "locs": dist.Normal(torch.tensor([0.0, 1.0]), 2.0),
        "scale": dist.Gamma(3.0, 2.0),
        "corr_chol": dist.LKJCholesky(2, 4.0),
    }
    model = GaussianMixture(2, "full", priors=priors)
    x = two_clusters()
    # ML with user priors still takes the (fast) closed-form M-step
    result = fit_em(model, x, objective="ml", columns=["a", "b"], seed=3)
    assert result.info["m_step"] == "closed_form"
    folder = result.save(tmp_path / "fit")
    assert folder == tmp_path / "fit"
    loaded = FitResult.load(folder)
    assert_same_result(loaded, result)
    assert loaded.columns == ["a", "b"]

    restored = loaded.model.priors
    assert set(restored) == set(priors)
    assert type(restored["weights"]) is dist.Dirichlet
    assert type(restored["locs"]) is dist.Normal
    assert type(restored["scale"]) is dist.Gamma
    assert type(restored["corr_chol"]) is dist.LKJCholesky
    # densities checked against scipy, not against the original objects
    w = torch.tensor([0.3, 0.7])
    assert float(restored["weights"].log_prob(w)) == pytest.approx(
        stats.dirichlet.logpdf([0.3, 0.7], [2.0, 3.0]), rel=1e-6
    )
    v = torch.tensor([0.5, -1.0])
    np.testing.assert_allclose(
        restored["locs"].log_prob(v).numpy(),
        stats.norm.logpdf([0.5, -1.0], [0.0, 1.0], 2.0),
        rtol=1e-6,
    )
    assert float(restored["scale"].log_prob(torch.tensor(1.3))) == pytest.approx(
        stats.gamma.logpdf(1.3, a=3.0, scale=0.5), rel=1e-6
    )
    r = 0.4
    chol = torch.tensor([[1.0, 0.0], [r, math.sqrt(1 - r**2)]])
    assert restored["corr_chol"].event_shape == (2, 2)
    assert float(restored["corr_chol"].log_prob(chol)) == pytest.approx(
        stats.beta.logpdf((r + 1) / 2, 4.0, 4.0) - math.log(2.0), rel=1e-6
    )
    # the loaded model is usable: it validates the data and gives the same likelihood
    loaded.model.validate(loaded.data)
    torch.testing.assert_close(
        loaded.model.log_likelihood(loaded.data, loaded.params),
        model.log_likelihood(x, result.params),
    )


def test_round_trip_of_fixed_tensors_and_student_t(tmp_path: Path) -> None:
    fixed_scale = torch.tensor([[0.5, 1.0], [2.0, 1.5]], dtype=torch.float64)
    model = StudentTMixture(
        2, "diag", df=7.5, priors={"scale": fixed_scale, "locs": dist.Normal(0.0, 10.0)}
    )
    x = two_clusters(30)
    result = FitResult(
        model=model,
        method="em",
        data=x,
        params={
            "weights": torch.tensor([0.4, 0.6], dtype=torch.float64),
            "locs": torch.tensor([[-3.0, -3.0], [3.0, 3.0]], dtype=torch.float64),
        },
        draws={"locs": torch.randn(2, 5, 2, 2, dtype=torch.float64)},
        history={"objective": [-3.0, -2.5], "log_likelihood": [-3.0, -2.5]},
        converged=False,
        n_iter=2,
        seed=None,
        fit_seconds=0.25,
        info={"objective": "map", "restart_objectives": [-2.5], "warnings": ["a note"]},
        columns=[],
    )
    loaded = FitResult.load(result.save(tmp_path))
    assert_same_result(loaded, result)
    assert loaded.model.df == 7.5
    assert torch.equal(loaded.model.priors["scale"], fixed_scale)
    assert loaded.model.priors["scale"].dtype == torch.float64
    assert type(loaded.model.priors["locs"]) is dist.Normal
    assert float(loaded.model.priors["locs"].scale) == 10.0
    # the fixed site stays fixed: it is not a latent site of the loaded model
    assert loaded.model.global_sites(2) == ["weights", "locs"]


def test_stick_breaking_prior_is_not_saved(tmp_path: Path) -> None:
    model = GaussianMixture(
        3,
        "spherical",
        priors={"weights": stick_breaking_prior(0.5, 3), "locs": dist.Normal(0.0, 5.0)},
    )
    x = two_clusters()
    result = fit_em(model, x, objective="ml")
    result.save(tmp_path)
    meta = strict_json(tmp_path / "result.json")
    assert meta["priors_not_saved"] == ["weights"]
    with pytest.warns(UserWarning, match=r"\['weights'\].*defaults"):
        loaded = FitResult.load(tmp_path)
    assert "weights" not in loaded.model.priors
    assert type(loaded.model.priors["locs"]) is dist.Normal
    # the default Dirichlet(1) is back: its density on the 3-simplex is log Gamma(3) = log 2
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    assert float(loaded.model.prior("weights", x, 2).log_prob(w)) == pytest.approx(math.log(2))
    for name, value in result.params.items():
        assert torch.equal(loaded.params[name], value)


def test_callable_prior_is_not_saved(tmp_path: Path) -> None:
    model = GaussianMixture(2, "diag", priors={"locs": lambda data: dist.Normal(data.mean(0), 1.0)})
    result = fit_em(model, two_clusters(), objective="ml")
    result.save(tmp_path)
    with pytest.warns(UserWarning, match="locs"):
        loaded = FitResult.load(tmp_path)
    assert loaded.model.priors == {}


# --------------------------------------------------------------------------------------------
# nothing but data on disk


def test_saved_folder_holds_no_code(tmp_path: Path) -> None:
    model = GaussianMixture(
        2, "full", priors={"locs": dist.Normal(0.0, 3.0), "corr_chol": dist.LKJCholesky(2, 2.0)}
    )
    result = fit_em(model, two_clusters(), objective="ml")
    result.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "tensors.pt"]
    meta = strict_json(tmp_path / "result.json")
    assert isinstance(meta, dict)
    assert meta["model"]["config"] == {"n_components": 2, "covariance_type": "full"}
    tensors = torch.load(tmp_path / "tensors.pt", weights_only=True)
    assert set(tensors["params"]) == set(result.params)
    # the pickle inside the archive names no class of this package, of Pyro, nor builtins
    with zipfile.ZipFile(tmp_path / "tensors.pt") as archive:
        pickles = [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    assert pickles
    for blob in pickles:
        for forbidden in (b"ppl_models", b"pyro", b"builtins", b"__main__", b"numpy"):
            assert forbidden not in blob


# --------------------------------------------------------------------------------------------
# missing or corrupt folders


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no saved fit result"):
        FitResult.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no saved fit result"):
        FitResult.load(tmp_path)  # exists, but empty


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    result = fit_em(GaussianMixture(2, "diag"), two_clusters())
    return result.save(tmp_path / "fit")


def test_missing_tensors_file(saved: Path) -> None:
    (saved / "tensors.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"tensors\.pt"):
        FitResult.load(saved)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a torch file at all" * 4, b"PK\x03\x04 broken zip"],
    ids=["empty", "garbage", "broken-zip"],
)
def test_corrupt_tensors_file(saved: Path, content: bytes) -> None:
    (saved / "tensors.pt").write_bytes(content)
    with pytest.raises(ValueError, match="corrupt"):
        FitResult.load(saved)


def test_truncated_tensors_file(saved: Path) -> None:
    blob = (saved / "tensors.pt").read_bytes()
    (saved / "tensors.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        FitResult.load(saved)


def test_tensors_file_with_code_refused(saved: Path) -> None:
    # a tensors.pt holding a pickled object: refused by weights_only loading, reported clearly
    torch.save({"params": {}, "payload": Path("x")}, saved / "tensors.pt")
    with pytest.raises(ValueError, match="corrupt"):
        FitResult.load(saved)


@pytest.mark.parametrize(
    "text",
    ["{not json", "", '["a", "list"]', '{"format": "ppl-models/fit-result/1"}'],
    ids=["syntax", "empty", "not-an-object", "missing-keys"],
)
def test_corrupt_result_json(saved: Path, text: str) -> None:
    (saved / "result.json").write_text(text)
    with pytest.raises(ValueError, match=r"corrupt|not a ppl-models fit result"):
        FitResult.load(saved)


def test_wrong_format_or_model(saved: Path) -> None:
    meta = json.loads((saved / "result.json").read_text())
    meta["format"] = "something-else/2"
    (saved / "result.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not a ppl-models fit result"):
        FitResult.load(saved)
    meta["format"] = "ppl-models/fit-result/1"
    meta["model"]["name"] = "hidden_markov"
    (saved / "result.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown model 'hidden_markov'"):
        FitResult.load(saved)
