"""Memory estimates against the tensors they estimate, and the memory limit.

The estimates are compared with the sizes (``numel * element_size``) of the tensors the code
really allocates: a mixture's responsibilities, log densities and covariances, and the GMVAE's
encoder-head input and decoder output on a minibatch, caught with forward hooks while the
model computes its ELBO terms.
"""

from __future__ import annotations

import os

import pytest
import torch

from ppl_models.infer.resources import (
    AVAILABLE_FRACTION,
    ENV_VAR,
    SE_PASS_SECONDS,
    MemoryEstimate,
    MemoryLimitError,
    available_memory,
    check_memory,
    format_bytes,
    memory_limit,
    mixture_memory,
    parse_bytes,
    standard_errors_seconds,
    vae_memory,
)
from ppl_models.models import (
    GMVAE,
    VAE,
    GaussianMixture,
    MixtureOfGaussiansPrior,
    StudentTMixture,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("123456", 123456), ("500M", 500_000_000), ("8G", 8_000_000_000),
     ("8 GB", 8_000_000_000), ("2GiB", 2 * 1024**3), ("1.5k", 1500), ("3e9", 3_000_000_000),
     ("off", None), ("None", None)],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "8X", "-5G", "0", "", "G"])
def test_parse_bytes_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError, match=ENV_VAR):
        parse_bytes(text)


def test_available_memory_reads_meminfo(tmp_path):
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       2000 kB\nMemFree:         100 kB\n"
                    "MemAvailable:    1500 kB\n")
    assert available_memory(fake) == 1500 * 1024


def test_available_memory_falls_back_to_sysconf(tmp_path):
    expected = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    got = available_memory(tmp_path / "absent")
    assert abs(got - expected) <= 0.1 * expected  # memory in use moves between the two reads


def test_memory_limit_from_the_environment_or_a_share_of_what_is_available():
    assert memory_limit({ENV_VAR: "3G"}) == (3_000_000_000, f"set by {ENV_VAR}")
    assert memory_limit({ENV_VAR: "off"})[0] is None
    limit, source = memory_limit({})
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < limit <= AVAILABLE_FRACTION * total
    assert ENV_VAR in source and f"{AVAILABLE_FRACTION:.0%}" in source


def test_check_memory_refuses_in_one_line_with_estimate_and_limit():
    estimate = MemoryEstimate("a run", {"data": 2_000_000},
                              {"fit": {"big": 5_000_000, "small": 1}, "other": {"x": 10}})
    assert estimate.total == 7_000_001
    assert estimate.largest() == ("big", 5_000_000)
    check_memory(estimate, 7_000_001, "given")  # at the limit: accepted
    with pytest.raises(MemoryLimitError) as caught:
        check_memory(estimate, 1_000_000, "given")
    message = str(caught.value)
    assert "\n" not in message
    assert "7.0 MB" in message and "1.0 MB" in message and "big" in message
    assert isinstance(caught.value, ValueError)
    check_memory(estimate, None, "no limit")


def test_format_bytes():
    assert format_bytes(41_024_000_000) == "41.0 GB"
    assert format_bytes(999) == "999 B"


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_mixture_estimate_against_the_tensors_it_counts(covariance_type):
    n, d, k = 3000, 4, 5
    torch.manual_seed(0)
    x = torch.randn(n, d, dtype=torch.float64)
    model = GaussianMixture(k, covariance_type)
    params = {
        "weights": torch.full((k,), 1.0 / k, dtype=torch.float64),
        "locs": torch.randn(k, d, dtype=torch.float64),
        "scale": torch.ones(k, d, dtype=torch.float64),
    }
    if covariance_type == "full":
        params["corr_chol"] = torch.eye(d, dtype=torch.float64).expand(k, d, d)
    estimate = mixture_memory(model, n, d, itemsize=8)
    fit = estimate.phases["fit"]
    resp = model.responsibilities(x, params)
    log_dens = model.log_joint_components(x, params)
    cov = model.covariances(model.full_params(params, d))
    assert fit["responsibilities (N x K)"] == resp.numel() * resp.element_size()
    assert fit["log densities (N x K)"] == log_dens.numel() * log_dens.element_size()
    counted = fit["covariances and their factors (K x D x D, 3 copies)"]
    assert counted == 3 * cov.numel() * cov.element_size()
    assert estimate.resident["data (N x D)"] == x.numel() * x.element_size()
    # The E-step's exact path builds (N, K*D) whitened differences (GaussianMixture's
    # _log_gaussian); the estimate must be within a factor of 2 of that tensor.
    whitened = torch.empty(n, k * d, dtype=torch.float64)
    size = whitened.numel() * whitened.element_size()
    assert size / 2 <= fit["E-step differences (N x K x D)"] <= 2 * size


def test_mixture_estimate_grows_with_n_and_k_and_adds_standard_errors():
    small = mixture_memory(GaussianMixture(2), 1000, 2, arviz=False)
    assert mixture_memory(GaussianMixture(2), 10_000, 2, arviz=False).total == pytest.approx(
        10 * small.total, rel=0.01)
    with_se = mixture_memory(GaussianMixture(2), 1000, 2, standard_errors=True, arviz=False)
    assert with_se.peak_phase == "standard errors" and with_se.total > small.total
    # no closed-form M-step: Pyro's enumeration keeps a K x N x D graph with its gradients
    student = mixture_memory(StudentTMixture(2), 1000, 2, arviz=False)
    extra = student.phases["fit"]["generic M-step graph (K x N x D, twice, with gradients)"]
    assert extra == 2 * 2 * 2 * 1000 * 2 * 8 and student.total == small.total + extra


def _hooked_sizes(model: GMVAE, x: torch.Tensor) -> dict[str, int]:
    sizes: dict[str, int] = {}

    def head_input(module, inputs):
        sizes["head"] = inputs[0].numel() * inputs[0].element_size()

    def decoder_output(module, inputs, output):
        sizes["decoder"] = output.numel() * output.element_size()

    hooks = [model.encoder.head.register_forward_pre_hook(head_input),
             model.decoder.register_forward_hook(decoder_output)]
    try:
        with torch.no_grad():
            model.elbo_terms(x)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def test_gmvae_estimate_against_its_encoder_and_decoder_tensors():
    torch.manual_seed(0)
    n, d, c, latent = 50, 64, 30, 4
    model = GMVAE(d, latent, c, hidden=(32,))
    x = (torch.rand(n, d) > 0.5).float()
    sizes = _hooked_sizes(model, x)
    estimate = vae_memory(model, n, batch_size=n, n_test=n)
    evaluation = estimate.phases["evaluation"]
    head = next(v for name, v in evaluation.items() if name.startswith("GMVAE encoder head"))
    assert head == sizes["head"]  # (C, B, H + C) float32, exactly
    decoder = next(v for name, v in evaluation.items() if name.startswith("GMVAE decoder"))
    assert sizes["decoder"] <= decoder <= 4 * sizes["decoder"]  # with the hidden layers
    # training keeps the activations for the backward pass
    train_head = next(v for name, v in estimate.phases["training"].items()
                      if name.startswith("GMVAE encoder head"))
    assert train_head == 2 * sizes["head"]


def test_gmvae_with_ten_thousand_labels_is_estimated_at_tens_of_gigabytes():
    model = GMVAE(64, 10, 10_000)
    estimate = vae_memory(model, 1500, batch_size=100, n_test=297)
    # the allocation PyTorch refused before this check existed: 41,024,000,000 bytes for a
    # batch of 100 (10000 x 100 x (256 + 10000) float32)
    training = estimate.phases["training"]
    head = next(v for name, v in training.items() if name.startswith("GMVAE encoder head"))
    assert head == 2 * 41_024_000_000
    with pytest.raises(MemoryLimitError, match="10000 labels"):
        check_memory(estimate, 8_000_000_000, "test")


def test_vae_estimates_count_the_networks_and_the_prior():
    plain = VAE(64, 5)
    weights = sum(p.numel() for p in plain.parameters())
    estimate = vae_memory(plain, 100, batch_size=10)
    assert estimate.resident["networks, gradients and Adam moments (4 copies)"] == 16 * weights
    mog = VAE(64, 5, prior=MixtureOfGaussiansPrior(2000))
    big = vae_memory(mog, 100, batch_size=10, n_test=100)
    assert big.total > estimate.total
    iw = big.phases["importance-weighted evaluation"]
    assert iw["prior densities (S x B x 2000, float64)"] == 3 * 500 * 100 * 2000 * 8


def test_estimators_refuse_other_models_and_bad_sizes():
    with pytest.raises(ValueError, match="FiniteMixture"):
        mixture_memory(VAE(4, 2), 10, 4)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        mixture_memory(GaussianMixture(2), 0, 2)
    with pytest.raises(ValueError, match="method"):
        mixture_memory(GaussianMixture(2), 10, 2, method="vi")
    with pytest.raises(ValueError, match="VAE"):
        vae_memory(GaussianMixture(2), 10, batch_size=2)


def test_standard_errors_seconds_counts_free_parameters():
    # K=2, D=2, full: 1 weight + 4 locations + 2 x 3 covariance entries = 11 parameters
    fixed, per_entry = SE_PASS_SECONDS
    seconds = standard_errors_seconds(GaussianMixture(2), 272, 2)
    assert seconds == pytest.approx(11 * (fixed + per_entry * 272 * 2 * 2))
    # diag: 1 + 4 + 4 = 9
    assert standard_errors_seconds(GaussianMixture(2, "diag"), 272, 2) == pytest.approx(
        9 * (fixed + per_entry * 272 * 2 * 2))
