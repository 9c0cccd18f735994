"""Every registered model: builds, counts, MACs against an independent counter, any input size."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cnnctl.errors import ModelError
from cnnctl.models import create, get_entry, list_models
from cnnctl.models.shapes import trace

pytestmark = pytest.mark.quick

MODELS = list_models()


def test_registry_holds_the_tutorial_models():
    assert {"model-a", "model-b", "model-c", "tiny", "tiny3", "catdog", "fashion", "lenet5", "resnet20"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_every_registered_model_describes_itself(name):
    entry = get_entry(name)
    assert entry.name == name and entry.description and entry.source
    c, h, w = entry.default_input
    assert c in (1, 3) and h >= 8 and w >= 8 and entry.num_classes >= 2


@pytest.mark.parametrize("name", MODELS)
def test_params_and_macs_match_independent_counts(name):
    entry = get_entry(name)
    torch.manual_seed(0)
    model = create(name).eval()
    result = trace(model, entry.default_input)
    assert result.diagnosis is None
    assert result.params == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *entry.default_input))
    assert result.macs == counter.get_total_flops() // 2
    assert result.rows[-1].output_shape == [1, entry.num_classes]


@pytest.mark.parametrize("name", MODELS)
def test_heads_are_sized_for_other_inputs_and_channels_last(name):
    # A 1-channel 40x44 input with 7 classes: the head must be sized by the dummy forward pass.
    model = create(name, (1, 40, 44), 7).eval()
    x = torch.randn(3, 1, 40, 44).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert model(x).shape == (3, 7)


def test_model_c_linear_is_32x4x4_at_28x28():
    model = create("model-c")
    assert model.classifier.in_features == 32 * 4 * 4


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v3_small"])
def test_torchvision_models_adapt_channels_and_classes(name):
    model = create(name, (1, 64, 64), 5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError, match="did you mean tiny"):
        create("tinny")
    with pytest.raises(ModelError, match="tv:resnet18"):
        create("tv:resnet181")


def test_too_small_input_is_a_model_error():
    with pytest.raises(ModelError, match="use a larger input"):
        create("catdog", (1, 8, 8))


def test_list_models_wildcards():
    assert list_models("resnet*") == ["resnet8", "resnet20", "resnet32", "resnet56"]
    assert "tv:resnet18" in list_models("tv:resnet*")


def test_tiny_bn_is_tiny_with_batchnorm_after_every_conv():
    plain, bn = create("tiny"), create("tiny-bn")
    convs = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
    bn_convs = [m for m in bn.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in bn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [c.weight.shape for c in convs] == [c.weight.shape for c in bn_convs]
    assert [n.num_features for n in norms] == [c.out_channels for c in bn_convs]
    assert all(c.bias is None for c in bn_convs) and all(c.bias is not None for c in convs)
