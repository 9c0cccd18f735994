"""Descriptions of registry entries with their parameter counts (for `cnnctl models`)."""

from __future__ import annotations

from typing import Any

import torch

from cnnctl.errors import ModelError
from cnnctl.models.registry import create, get_entry, list_models
from cnnctl.specs import format_shape


def describe_models(pattern: str = "*") -> list[dict[str, Any]]:
    """One dict per model matching `pattern`; models are built on the meta device (no memory)."""
    names = list_models(pattern)
    if not names:
        raise ModelError(f"no model matches {pattern!r}; run `cnnctl models` to list them all")
    rows = []
    for name in names:
        entry = get_entry(name)
        with torch.device("meta"):
            model = create(name)
        rows.append(
            {
                "name": name,
                "default_input": format_shape(entry.default_input),
                "num_classes": entry.num_classes,
                "params": sum(p.numel() for p in model.parameters()),
                "description": entry.description,
                "source": entry.source,
            }
        )
    return rows
