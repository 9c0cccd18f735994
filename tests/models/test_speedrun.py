"""fastnet-w's patch-whitening stem: initialised from the training images, never trained."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from cnnctl.data.batches import normalize
from cnnctl.data.sources import load_source
from cnnctl.models import create
from cnnctl.models.layers import init_from_data
from tests.conftest import CIFAR_MINI, run_cli


def _cifar(tmp_path) -> torch.Tensor:
    src = load_source(
        str(CIFAR_MINI), "", False, None, False, str(tmp_path / "cache"), lambda m: None, "stretch", 0.875, "bilinear"
    )
    x = src.train.images(torch.arange(len(src.train)))
    return normalize(x, torch.full((1, 3, 1, 1), 0.47), torch.full((1, 3, 1, 1), 0.25))


def _patch_covariance(stem: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x, stem.weight)  # without the bias: the whitened patches
    flat = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]).double()
    return flat.T @ flat / len(flat)


def test_whitening_makes_the_image_patches_unit_and_uncorrelated(tmp_path):
    x = _cifar(tmp_path)
    model = create("fastnet-w", (3, 32, 32), 10)
    stem = model.features[0]
    assert "features.0.weight" not in dict(model.named_parameters())  # a buffer: SGD never sees it
    assert init_from_data(model, x) == ["features.0"]
    cov = _patch_covariance(stem, x)
    half = cov[:12, :12]  # 12 = 3 channels x 2 x 2 components, then the same 12 negated
    # Uncorrelated; unit variance, except that eps = 5e-4 in the scaling (lambda / (lambda + eps))
    # damps the faintest components, whose variance is of the order of eps.
    off = half - torch.diag(torch.diag(half))
    assert off.abs().max() < 1e-3
    variances = torch.diag(half)
    # Measured on these 200 images: 0.9999 ... 0.991 for the first six, down to 0.20 for the last.
    assert ((variances > 0) & (variances <= 1)).all() and (variances[:6] > 0.95).all(), variances
    assert (variances[1:] <= variances[:-1] + 1e-6).all()  # strongest component first
    torch.testing.assert_close(stem.weight[12:], -stem.weight[:12])


def test_a_run_initialises_the_stem_once_and_resume_keeps_it(tmp_path):
    out = tmp_path / "w"
    proc = run_cli(
        "train",
        "fastnet-w",
        "--data",
        CIFAR_MINI,
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--val-split",
        "0.2",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    assert "features.0: initialised from 160 training images (patch whitening)" in proc.stderr
    first = load_file(str(out / "last.safetensors"))["model/features.0.weight"]
    torch.manual_seed(0)  # the run's --seed: what the stem would hold without the whitening
    assert not torch.equal(first, create("fastnet-w", (3, 32, 32), 10).features[0].weight)
    resumed = run_cli("train", "--resume", out, "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "patch whitening" not in resumed.stderr
    assert torch.equal(load_file(str(out / "last.safetensors"))["model/features.0.weight"], first)


def test_fastnet_wd_convolutions_start_as_the_identity():
    model = create("fastnet-wd", (3, 32, 32), 10)
    convs = [m for m in model.features if type(m) is torch.nn.Conv2d]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (24, 64),
        (64, 64),
        (64, 128),
        (128, 128),
        (128, 128),
        (128, 128),
    ]
    with torch.no_grad():
        x = torch.randn(2, 128, 6, 6)
        torch.testing.assert_close(convs[3](x), x)  # a square convolution passes its input through
        y = convs[0](x[:, :24])  # a widening one passes it through its first filters; the rest are random
        torch.testing.assert_close(y[:, :24], x[:, :24])
        assert y[:, 24:].abs().mean() > 0.01
    plain = create("fastnet-w", (3, 32, 32), 10)
    assert not torch.equal(plain.features[2].weight[:24], convs[0].weight[:24])
