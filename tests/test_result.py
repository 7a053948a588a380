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


# --------------------------------------------------------------------------------------------
# every family round-trips: mixtures by EM, SVI and NUTS; VAEs with every prior; GMVAEs


def _fit_result(model, method: str, data: torch.Tensor, params=None, draws=None) -> FitResult:
    return FitResult(
        model=model, method=method, data=data, params=dict(params or {}), draws=draws,
        history={"elbo": [-3.0, -2.0]}, converged=True, n_iter=2, seed=4, fit_seconds=0.5,
        info={"guide": "model"}, columns=[],
    )


@pytest.mark.parametrize("method", ["svi", "nuts"])
def test_round_trip_of_svi_and_nuts_mixture_fits(tmp_path: Path, method: str) -> None:
    from ppl_models.infer import fit_mcmc, fit_svi

    x = two_clusters(40)
    model = GaussianMixture(2, "full")
    if method == "svi":
        result = fit_svi(model, x, guide="mean_field", num_steps=30, num_draws=20, progress=False)
    else:
        result = fit_mcmc(model, x, num_samples=10, warmup_steps=10, num_chains=2, progress=False)
    loaded = FitResult.load(result.save(tmp_path))
    assert_same_result(loaded, result)
    assert loaded.draws["locs"].shape[:2] == result.draws["locs"].shape[:2]
    # the loaded model gives the original's pointwise log-likelihood at every draw
    torch.testing.assert_close(
        loaded.model.log_likelihood(loaded.data, loaded.draws),
        model.log_likelihood(x, result.draws), rtol=0, atol=1e-6,
    )


def _vae_variants():
    from ppl_models.models import GMVAE, VAE, MixtureOfGaussiansPrior, VampPrior

    return {
        "standard": lambda: VAE(6, 2, hidden=(8,)),
        "mog": lambda: VAE(6, 2, prior=MixtureOfGaussiansPrior(3, learn_weights=False),
                           hidden=(8,)),
        "vamp": lambda: VAE(6, 2, prior=VampPrior(4), hidden=(8,)),
        "distribution": lambda: VAE(
            6, 2, prior=dist.Normal(torch.tensor([0.5, -1.0]), 2.0).to_event(1), hidden=(8,)
        ),
        "gaussian": lambda: VAE(6, 2, likelihood="gaussian", hidden=(8,)),
        "gmvae": lambda: GMVAE(6, 2, 3, hidden=(8,)),
        "gmvae_q(z|x)": lambda: GMVAE(6, 2, 3, conditional_encoder=False, hidden=(8,)),
    }


def _binary(n: int = 12, d: int = 6) -> torch.Tensor:
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(1)) < 0.4).float()


@pytest.mark.parametrize("variant", list(_vae_variants()))
def test_round_trip_of_amortized_models(tmp_path: Path, variant: str) -> None:
    model = _vae_variants()[variant]()
    with torch.no_grad():  # move every weight off its initial value
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = _binary() if variant != "gaussian" else torch.randn(12, 6)
    result = _fit_result(model, "svi", x)
    folder = result.save(tmp_path / variant)
    torch.manual_seed(123)  # loading must not depend on, nor move, the global RNG
    state = torch.get_rng_state()
    loaded = FitResult.load(folder)
    assert torch.equal(torch.get_rng_state(), state)
    assert_same_result(loaded, result)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    # the same ELBO terms and importance weights under the same noise
    for fn in (lambda m: m.elbo_terms(x), lambda m: {"w": m.log_importance_weights(x, 3)}):
        torch.manual_seed(7)
        original = fn(model)
        torch.manual_seed(7)
        again = fn(loaded.model)
        assert set(again) == set(original)
        for name in original:
            torch.testing.assert_close(again[name], original[name], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# configuration and tensors must agree


def _edit_json(folder: Path, edit) -> None:
    meta = json.loads((folder / "result.json").read_text())
    edit(meta)
    (folder / "result.json").write_text(json.dumps(meta))


def _edit_tensors(folder: Path, edit) -> None:
    tensors = torch.load(folder / "tensors.pt", weights_only=True)
    edit(tensors)
    torch.save(tensors, folder / "tensors.pt")


def test_load_refuses_a_number_of_components_the_tensors_do_not_have(saved: Path) -> None:
    _edit_json(saved, lambda m: m["model"]["config"].update(n_components=3))
    with pytest.raises(ValueError, match=r"params\['weights'\].*n_components"):
        FitResult.load(saved)


@pytest.mark.parametrize("saved_as", ["spherical", "full"])
def test_load_refuses_a_changed_covariance_type(saved: Path, saved_as: str) -> None:
    # the fixture was fitted with diagonal covariances
    _edit_json(saved, lambda m: m["model"]["config"].update(covariance_type=saved_as))
    with pytest.raises(ValueError, match=r"params.*(scale|corr_chol)"):
        FitResult.load(saved)


def test_load_refuses_another_models_tensors(saved: Path, tmp_path: Path) -> None:
    from ppl_models.models import VAE

    vae = VAE(2, 2, likelihood="gaussian", hidden=(4,))
    vae_folder = _fit_result(vae, "svi", two_clusters(20).float()).save(tmp_path / "vae")
    gmm_tensors = (saved / "tensors.pt").read_bytes()
    (saved / "tensors.pt").write_bytes((vae_folder / "tensors.pt").read_bytes())
    with pytest.raises(ValueError, match=r"state: a gmm has no network weights"):
        FitResult.load(saved)
    (vae_folder / "tensors.pt").write_bytes(gmm_tensors)
    with pytest.raises(ValueError, match=r"params: a vae has no global latent sites"):
        FitResult.load(vae_folder)


def test_load_refuses_weights_of_another_network(tmp_path: Path) -> None:
    from ppl_models.models import VAE

    folder = _fit_result(VAE(6, 2, hidden=(8,)), "svi", _binary()).save(tmp_path)
    _edit_json(folder, lambda m: m["model"]["config"].update(hidden=[5]))
    with pytest.raises(ValueError, match=r"state\['encoder.*has shape"):
        FitResult.load(folder)


@pytest.mark.parametrize("group", ["params", "draws", "data", "state"])
def test_load_refuses_non_finite_values(tmp_path: Path, group: str) -> None:
    from ppl_models.models import VAE

    if group == "state":
        folder = _fit_result(VAE(6, 2, hidden=(8,)), "svi", _binary()).save(tmp_path)
    else:
        x = two_clusters(20)
        params = {
            "weights": torch.tensor([0.5, 0.5], dtype=x.dtype),
            "locs": torch.zeros(2, 2, dtype=x.dtype),
            "scale": torch.ones(2, 2, dtype=x.dtype),
        }
        draws = {k: v.expand(1, 3, *v.shape).clone() for k, v in params.items()}
        folder = _fit_result(GaussianMixture(2, "diag"), "nuts", x, params, draws).save(tmp_path)

    def poison(tensors):
        target = tensors[group] if group != "data" else tensors
        key = next(k for k in sorted(target) if target[k].is_floating_point()) \
            if group != "data" else "data"
        target[key] = target[key].clone()
        target[key].view(-1)[0] = math.nan

    _edit_tensors(folder, poison)
    with pytest.raises(ValueError, match=rf"{group}.*non-finite"):
        FitResult.load(folder)


@pytest.mark.parametrize("name", ["TransformedDistribution", "Binomial", "__class__", 3])
def test_load_refuses_a_prior_distribution_outside_the_allow_list(
    tmp_path: Path, name
) -> None:
    model = GaussianMixture(2, "diag", priors={"locs": dist.Normal(0.0, 3.0)})
    folder = fit_em(model, two_clusters()).save(tmp_path)
    _edit_json(folder, lambda m: m["model"]["priors"]["locs"].update(distribution=name))
    with pytest.raises(ValueError, match=r"model.priors\['locs'\].*not one a result may name"):
        FitResult.load(folder)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_iter", "5"), ("n_iter", 2.0), ("n_iter", True), ("converged", "yes"),
        ("converged", 1), ("seed", 1.5), ("fit_seconds", "fast"), ("history", [1.0]),
        ("history", {"elbo": ["a"]}), ("columns", [1, 2]), ("info", []), ("method", None),
        ("priors_not_saved", "weights"), ("model", "gmm"),
    ],
)
def test_load_refuses_recorded_fields_of_the_wrong_type(saved: Path, field: str, value) -> None:
    _edit_json(saved, lambda m: m.update({field: value}))
    with pytest.raises(ValueError, match=rf"^{field}"):
        FitResult.load(saved)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["model"]["config"].update(bogus=1),
        lambda m: m["model"]["config"].update(n_components="2"),
        lambda m: m["model"].update(config=[1]),
        lambda m: m["model"].update(name=["gmm"]),
        lambda m: m["model"].update(priors={"locs": {"distribution": "Normal"}}),
        lambda m: m["model"].update(priors={"locs": {"fixed": True}}),
        lambda m: m["model"].update(priors=[]),
        lambda m: m["model"]["config"].pop("covariance_type"),
        lambda m: m.update(format=None),
    ],
    ids=["extra-key", "k-string", "config-list", "name-list", "prior-without-tensors",
         "fixed-without-tensors", "priors-list", "missing-key", "format"],
)
def test_hostile_result_json_ends_in_value_error(saved: Path, edit) -> None:
    _edit_json(saved, edit)
    with pytest.raises(ValueError):
        FitResult.load(saved)


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.update(params=[1]),
        lambda t: t.update(data=torch.zeros(3)),
        lambda t: t["params"].update(locs=torch.zeros(2, 3, dtype=torch.float64)),
        lambda t: t["params"].pop("locs"),
        lambda t: t["params"].update(extra=torch.zeros(2)),
        lambda t: t.update(state={"encoder.weight": torch.zeros(2)}),
        lambda t: t.update(priors={"locs": {"loc": "x"}}),
    ],
    ids=["params-list", "data-1d", "locs-shape", "missing-site", "foreign-site", "state",
         "priors"],
)
def test_hostile_tensors_end_in_value_error(saved: Path, edit) -> None:
    _edit_tensors(saved, edit)
    with pytest.raises(ValueError):
        FitResult.load(saved)


def test_vae_with_an_unknown_latent_prior_is_refused(tmp_path: Path) -> None:
    from ppl_models.models import VAE

    folder = _fit_result(VAE(6, 2, hidden=(8,)), "svi", _binary()).save(tmp_path)
    _edit_json(folder, lambda m: m["model"]["config"]["prior"].update(name="os.system"))
    with pytest.raises(ValueError, match=r"prior: unknown latent prior 'os\.system'"):
        FitResult.load(folder)
