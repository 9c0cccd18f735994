"""Every shipped recipe parses into the config, and its model fits its data (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnctl.config import load_recipe, resolve
from cnnctl.models.tracing import trace_model
from cnnctl.specs import parse_image_size
from tests.conftest import ROOT

RECIPES = sorted((ROOT / "recipes").glob("*.toml"))
NATIVE = {"mnist": (1, 28, 28), "mnist-mini": (1, 28, 28), "fashion-mnist": (1, 28, 28), "kmnist": (1, 28, 28),
          "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}  # fmt: skip


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {"quickstart.toml", "mnist-model-a.toml", "mnist-model-b.toml", "mnist-model-c.toml", "cifar10-tiny.toml",
            "cifar10-tiny3.toml", "catdog-50.toml", "fashion-mnist.toml", "mnist-fast.toml", "cifar10-fast.toml",
            "catdog-better.toml"} <= names  # fmt: skip


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_model_fits_its_data(path: Path):
    text = path.read_text()
    assert text.lstrip().startswith("#"), "every recipe starts with a comment block: source and results"
    comment = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "measured" in comment.lower(), f"{path.name}: the comment block says what was measured here"
    cfg = resolve(None, str(path), {})
    assert load_recipe(path)["model"] == cfg.model
    if cfg.data in NATIVE:
        c, h, w = NATIVE[cfg.data]
    else:  # an image folder: the recipe must say how to size it
        assert cfg.image_size, f"{path.name}: image-folder recipes set image_size"
        h, w = parse_image_size(cfg.image_size)
        c = 1 if cfg.grayscale else 3
    classes = 2 if cfg.model == "catdog" else (100 if cfg.data == "cifar100" else 10)
    result = trace_model(cfg.model, (c, h, w), num_classes=classes, fit=True)
    assert result.diagnosis is None
    assert result.rows[-1].output_shape == [1, classes]
