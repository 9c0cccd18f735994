"""Every shipped recipe parses into the config, and its model fits its data (no training)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnctl.config import load_recipe, resolve
from cnnctl.models.tracing import trace_model
from cnnctl.specs import parse_image_size
from tests.conftest import ROOT

pytestmark = pytest.mark.quick

RECIPES = sorted((ROOT / "cnnctl" / "recipes").glob("*.toml"))
NATIVE = {
    "mnist": (1, 28, 28),
    "mnist-mini": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "kmnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
}


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {
        "quickstart.toml",
        "mnist-model-a.toml",
        "mnist-model-b.toml",
        "mnist-model-c.toml",
        "cifar10-tiny.toml",
        "cifar10-tiny3.toml",
        "catdog-50.toml",
        "fashion-mnist.toml",
        "mnist-fast.toml",
        "cifar10-fast.toml",
        "catdog-better.toml",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_model_fits_its_data(path: Path):
    text = path.read_text()
    assert text.lstrip().startswith("#"), "every recipe starts with a comment block: source and results"
    comment = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "measured" in comment.lower(), f"{path.name}: the comment block says what was measured here"
    if re.search(r"\d(\.\d+)?\s?%|img/s|\d s\b", comment) and "not measured here" not in comment.lower():
        # Figures belong to the machine they were measured on: CPU model, cores and the flags that matter.
        machine = re.search(r"^# Machine[^:]*: (.+)$", comment, re.M)
        assert machine, f"{path.name}: measured figures need a '# Machine: ...' line (CPU model, cores, flags)"
        assert re.search(r"\d+ cores?", machine.group(1)) and re.search(r"avx|asimd|neon|sve", machine.group(1)), (
            machine.group(1)
        )
    assert 'amp = "bf16"' not in text and 'amp = "fp16"' not in text, (
        f'{path.name}: precision depends on the machine; use amp = "auto"'
    )
    cfg = resolve(None, str(path), {})
    assert load_recipe(path)["model"] == cfg.model
    if cfg.data in NATIVE:
        c, h, w = NATIVE[cfg.data]
    else:  # an image folder: the recipe must say how to size it
        assert cfg.image_size, f"{path.name}: image-folder recipes set image_size"
        h, w = parse_image_size(cfg.image_size)
        c = 1 if cfg.grayscale else 3
    classes = 2 if cfg.model == "catdog" else (100 if cfg.data == "cifar100" else 10)
    if cfg.model.startswith("timm:"):
        pytest.importorskip("timm", reason=f"{path.name} uses a timm model (pip install 'cnnctl[timm]')")
    result = trace_model(cfg.model, (c, h, w), num_classes=classes, fit=True)
    assert result.diagnosis is None
    assert result.rows[-1].output_shape == [1, classes]


def test_every_results_section_names_its_machine():
    """docs/results.md: a section with measured figures says which machine they belong to."""
    text = (ROOT / "docs" / "results.md").read_text()
    sections = re.split(r"(?m)^## ", text)[1:]
    for section in sections:
        title = section.splitlines()[0]
        if re.search(r"\d\s?%|img/s", section) and not title.startswith("Credits"):
            line = re.search(r"(?m)^Machine[^:]*: (.+)$", section)
            assert line, f"docs/results.md section {title!r} has figures but no 'Machine: ...' line"
            assert re.search(r"\d+ cores?", line.group(1)) and re.search(r"avx|asimd|neon|sve", line.group(1)), (
                line.group(1)
            )
