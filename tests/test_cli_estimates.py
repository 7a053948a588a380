"""Long commands announce their work before starting it, with the numbers they were given.

Each test replaces the function that does the work with a spy that records standard error at
the moment it is called (and what it was asked to do), then stops the command: the estimate
must already be printed, and its numbers must be the ones the work was started with.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

import ppl_models.infer
import ppl_models.workflows.compare
import ppl_models.workflows.select_k
from ppl_models.cli import main
from ppl_models.images import load_images


class _Started(Exception):
    """Raised by the spy: the work would start here."""


@pytest.fixture
def spy(monkeypatch, capsys):
    """``spy(module, name)`` replaces ``module.name``; returns the record of its one call."""

    def install(module: Any, name: str) -> dict[str, Any]:
        record: dict[str, Any] = {}

        def started(*args: Any, **kwargs: Any) -> None:
            record.update(err=capsys.readouterr().err, args=args, kwargs=kwargs)
            raise _Started

        monkeypatch.setattr(module, name, started)
        return record

    return install


def _run(argv: list[str]) -> None:
    with pytest.raises(_Started):
        main(argv)


def _numbers(pattern: str, text: str) -> list[int]:
    match = re.search(pattern, text)
    assert match is not None, f"no {pattern!r} in {text!r}"
    return [int(g) for g in match.groups()]


# ----------------------------------------------------------------------------- compare-guides
COMPARE = (r"ppl-models: a NUTS reference of (\d+) chain\(s\) x \((\d+) warm-up \+ (\d+) "
           r"draws\), then (\d+) SVI fits \((\d+) guides x (\d+) seeds\) of (\d+) steps each")


def test_compare_guides_announces_nuts_and_svi_fits_before_the_first(spy, tmp_path):
    record = spy(ppl_models.workflows.compare, "compare_guides")
    _run(["compare-guides", "gmm", "--guides", "map,mean_field,full_rank", "--seeds", "2",
          "--steps", "30", "--nuts-samples", "7", "--nuts-warmup", "5", "--chains", "3",
          "--out", str(tmp_path / "o")])
    chains, warmup, draws, fits, n_guides, n_seeds, steps = _numbers(COMPARE, record["err"])
    assert (chains, warmup, draws, fits, n_guides, n_seeds, steps) == (3, 5, 7, 6, 3, 2, 30)
    kwargs = record["kwargs"]
    assert len(record["args"][2]) == n_guides and kwargs["seeds"] == n_seeds
    assert kwargs["num_steps"] == steps and kwargs["reference"] == "nuts"
    assert (kwargs["nuts_chains"], kwargs["nuts_warmup"], kwargs["nuts_samples"]) == (
        chains, warmup, draws)


def test_compare_guides_without_reference_counts_listed_seeds(spy, tmp_path):
    record = spy(ppl_models.workflows.compare, "compare_guides")
    _run(["compare-guides", "gmm", "--guides", "map,mean_field", "--seeds", "4,9",
          "--steps", "30", "--nuts-samples", "0", "--out", str(tmp_path / "o")])
    err = record["err"]
    assert "NUTS" not in err
    fits, n_guides, n_seeds, steps = _numbers(
        r"ppl-models: (\d+) SVI fits \((\d+) guides x (\d+) seeds\) of (\d+) steps each", err)
    assert (fits, n_guides, n_seeds, steps) == (4, 2, 2, 30)
    assert record["kwargs"]["seeds"] == [4, 9] and record["kwargs"]["reference"] is None


def test_quiet_compare_guides_prints_no_estimate(spy, tmp_path):
    record = spy(ppl_models.workflows.compare, "compare_guides")
    _run(["compare-guides", "gmm", "--steps", "30", "--quiet", "--out", str(tmp_path / "o")])
    assert record["err"] == ""


# ----------------------------------------------------------------------------- select-k
@pytest.mark.parametrize(("posterior", "then"), [
    ("svi", r"then (\d+) SVI steps"), ("nuts", r"then a NUTS run for (\d+) draws"),
])
def test_select_k_announces_its_fits_before_the_first(spy, tmp_path, posterior, then):
    record = spy(ppl_models.workflows.select_k, "select_components")
    _run(["select-k", "--ks", "1-3,5", "--n-init", "2", "--steps", "40", "--draws", "60",
          "--posterior", posterior, "--criteria", "bic", "--out", str(tmp_path / "o")])
    n_k, n_init, last = _numbers(
        r"ppl-models: (\d+) values of K, each (\d+) EM restart\(s\) " + then, record["err"])
    kwargs = record["kwargs"]
    assert n_k == len(record["args"][1]) == 4 and n_init == kwargs["n_init"] == 2
    assert kwargs["posterior"] == posterior
    assert last == (kwargs["num_steps"] if posterior == "svi" else kwargs["num_draws"])
    assert last == (40 if posterior == "svi" else 60)


# ----------------------------------------------------------------------------- fit
def test_fit_gmm_nuts_announces_chains_warmup_and_draws(spy, tmp_path):
    record = spy(ppl_models.infer, "fit_mcmc")
    _run(["fit", "gmm", "--method", "nuts", "--num-samples", "9", "--warmup", "7",
          "--chains", "2", "--no-plots", "--out", str(tmp_path / "o")])
    chains, warmup, draws = _numbers(
        r"ppl-models: NUTS: (\d+) chain\(s\) run one after the other, each (\d+) warm-up \+ "
        r"(\d+) draws", record["err"])
    kwargs = record["kwargs"]
    assert (chains, warmup, draws) == (kwargs["num_chains"], kwargs["warmup_steps"],
                                       kwargs["num_samples"]) == (2, 7, 9)


@pytest.mark.parametrize(("argv", "driver", "pattern", "keys"), [
    (["--method", "svi", "--num-steps", "55"], "fit_svi",
     r"ppl-models: SVI: 1 fit of (\d+) steps \(mean_field guide\)", ("num_steps",)),
    (["--method", "em", "--n-init", "3", "--max-iter", "21"], "fit_em",
     r"ppl-models: EM: (\d+) restart\(s\) of at most (\d+) iterations", ("n_init", "max_iter")),
])
def test_fit_gmm_announces_svi_and_em_work(spy, tmp_path, argv, driver, pattern, keys):
    record = spy(ppl_models.infer, driver)
    _run(["fit", "gmm", *argv, "--no-plots", "--out", str(tmp_path / "o")])
    assert _numbers(pattern, record["err"]) == [record["kwargs"][k] for k in keys]


def test_fit_vae_announces_epochs_and_steps_before_training(spy, tmp_path):
    record = spy(ppl_models.infer, "fit_svi")
    _run(["fit", "vae", "--epochs", "3", "--batch-size", "400", "--particles", "17",
          "--no-plots", "--out", str(tmp_path / "o")])
    epochs, steps, batch, n, particles = _numbers(
        r"ppl-models: VAE: (\d+) epochs x (\d+) steps \(batch (\d+) of (\d+) images\), then "
        r"(\d+) importance samples per test image", record["err"])
    n_train = load_images("digits", split="train")[0].shape[0]
    assert n == n_train == record["args"][1].shape[0]
    assert (epochs, batch) == (record["kwargs"]["num_epochs"], record["kwargs"]["batch_size"])
    assert (epochs, batch, particles) == (3, 400, 17)
    assert steps == -(-n_train // 400)  # ceil: the last batch is short
