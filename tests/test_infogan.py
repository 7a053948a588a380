"""InfoGAN against Chen et al. (2016): the networks of appendix C.1, Q on the discriminator's
body, the codes fed and drawn afresh, and the categorical code recovering well-separated
clusters (labels known) after Hungarian matching."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare
from torch import nn

from ppl_models.diagnostics import cluster_accuracy
from ppl_models.infer import fit_adversarial
from ppl_models.models import InfoGAN


def _layers(module: nn.Module) -> list[tuple]:
    """(type, defining sizes) of every leaf layer, in order."""
    out = []
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            out.append(("fc", layer.in_features, layer.out_features))
        elif isinstance(layer, nn.Conv2d):
            out.append(("conv", layer.in_channels, layer.out_channels, layer.kernel_size,
                        layer.stride))
        elif isinstance(layer, nn.ConvTranspose2d):
            out.append(("deconv", layer.in_channels, layer.out_channels, layer.kernel_size,
                        layer.stride))
        elif isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d):
            out.append(("bn", layer.num_features))
        elif isinstance(layer, nn.LeakyReLU):
            out.append(("lrelu", layer.negative_slope))
        elif isinstance(layer, nn.ReLU):
            out.append(("relu",))
    return out


def test_conv_networks_are_those_of_appendix_c1():
    model = InfoGAN(784, 62, n_categories=10, n_continuous=2, architecture="conv",
                    output="unit")
    k4, s2 = (4, 4), (2, 2)
    # written from Chen et al. (2016), appendix C.1, table "MNIST"
    assert _layers(model.discriminator) == [
        ("conv", 1, 64, k4, s2), ("lrelu", 0.2),
        ("conv", 64, 128, k4, s2), ("bn", 128), ("lrelu", 0.2),
        ("fc", 128 * 7 * 7, 1024), ("bn", 1024), ("lrelu", 0.2),
        ("fc", 1024, 1),
    ]
    assert _layers(model.code_inference) == [
        ("fc", 1024, 128), ("bn", 128), ("lrelu", 0.2), ("fc", 128, 10 + 2),
    ]
    assert _layers(model.generator) == [
        ("fc", 62 + 10 + 2, 1024), ("bn", 1024), ("relu",),
        ("fc", 1024, 7 * 7 * 128), ("bn", 7 * 7 * 128), ("relu",),
        ("deconv", 128, 64, k4, s2), ("bn", 64), ("relu",),
        ("deconv", 64, 1, k4, s2),
    ]
    images = model.generate(5)
    assert images.shape == (5, 784)
    assert bool(((images > 0) & (images < 1)).all())
    logits, means = model.infer_codes(images)
    assert logits.shape == (5, 10) and means.shape == (5, 2)


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_q_reads_the_discriminator_body_and_the_players_stay_disjoint(architecture):
    torch.manual_seed(0)
    dim = 784 if architecture == "conv" else 5
    model = InfoGAN(dim, 3, n_categories=4, architecture=architecture, hidden=(8,),
                    d_hidden=(8,), q_hidden=(6,), channels=(4, 8), dense=16).eval()
    generator = {id(p) for p in model.generator_parameters()}
    discriminator = {id(p) for p in model.discriminator_parameters()}
    assert not generator & discriminator
    assert {id(p) for p in model.code_inference.parameters()} <= generator
    x = torch.rand(7, dim)
    before = model.infer_codes(x)[0]
    with torch.no_grad():  # the discriminator's logit head is not Q's
        model.discriminator.head.weight.add_(1.0)
    torch.testing.assert_close(model.infer_codes(x)[0], before)
    with torch.no_grad():  # its body is
        next(model.discriminator.trunk.parameters()).add_(1.0)
    assert not torch.allclose(model.infer_codes(x)[0], before)
    own = InfoGAN(dim, 3, n_categories=4, architecture=architecture, hidden=(8,),
                  d_hidden=(8,), q_hidden=(6,), channels=(4, 8), dense=16,
                  share_discriminator=False)
    assert not {id(p) for p in own.code_inference.parameters()} & {
        id(p) for p in own.discriminator_parameters()}


def test_codes_are_uniform_fresh_and_fed_to_the_generator():
    torch.manual_seed(1)
    model = InfoGAN(2, 3, n_categories=5, n_continuous=2, hidden=(8,), d_hidden=(8,))
    x = torch.zeros(4000, 2)
    first, second = model.adversarial_draws(x), model.adversarial_draws(x)
    code = first.context["code"]
    assert not torch.equal(code, second.context["code"])
    assert chisquare(torch.bincount(code, minlength=5).numpy()).pvalue > 1e-4
    style = first.context["style"]
    assert float(style.min()) >= -1 and float(style.max()) <= 1
    assert abs(float(style.mean())) < 0.05 and abs(float(style.var()) - 1 / 3) < 0.02
    # the generator's input is [z, onehot(c), s]: the gradient of the information term
    # reaches the first layer's columns of the one-hot code
    model.zero_grad()
    model.generator_terms(x[:64], model.adversarial_draws(x[:64]))["information"].backward()
    first_layer = next(m for m in model.generator.modules() if isinstance(m, nn.Linear))
    code_columns = first_layer.weight.grad[:, 3:8]
    assert float(code_columns.abs().sum()) > 0


def _blobs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0], [0.0, -4.0]])
    labels = torch.arange(4).repeat(250)
    return centres[labels] + 0.3 * torch.randn(1000, 2, generator=generator), labels


def test_categorical_code_recovers_well_separated_blobs():
    """Four blobs 8 standard deviations apart: after training, argmax_c Q(c | x) on the data
    matches the blob labels (Hungarian matching) almost everywhere (1.0 for five seeds, with
    the paper's learning rates: 1e-3 for G and Q, 2e-4 for D). Planted bugs, three seeds each:
    the information term detached from G (only Q learns to read G's output): 0.57-0.75; the
    code not fed to G: 0.26-0.80; the term's sign flipped: 0.25."""
    torch.manual_seed(1)
    x, labels = _blobs(1)
    model = InfoGAN(2, 2, n_categories=4, n_continuous=0, hidden=(32, 32), d_hidden=(32, 32),
                    q_hidden=(32,))
    fit_adversarial(model, x, batch_size=100, num_epochs=100, lr=1e-3, d_lr=2e-4,
                    progress=False, seed=1)
    with torch.no_grad():
        codes = model.infer_codes(x)[0].argmax(-1)
    assert codes.unique().numel() == 4
    assert cluster_accuracy(codes, labels) > 0.95
