"""Shape traces of what users name: a registry model, or a trained checkpoint / run directory.

The tracer itself (`cnnctl.models.shapes`) takes any nn.Module and knows nothing of the registry; this
module connects the two, so the dependency runs one way: models -> shapes, never back.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cnnctl.models.registry import create, get_entry
from cnnctl.models.shapes import Trace, trace


def trace_model(
    name: str,
    input_shape: tuple[int, int, int],
    *,
    batch: int = 1,
    num_classes: int | None = None,
    fit: bool = False,
) -> Trace:
    """Build registry model `name` on the meta device and trace `input_shape` through it.

    The model is built for its default input (as a tutorial defines it) unless `fit` is set,
    in which case it is built for `input_shape`, the way `cnnctl train` builds it for the data.
    """
    entry = get_entry(name)
    built_for = input_shape if fit else entry.default_input
    with torch.device("meta"):
        model = create(name, built_for, num_classes)
    return trace(model, input_shape, batch, built_for=built_for)


def trace_built(name: str, input_shape: tuple[int, int, int], num_classes: int) -> Trace:
    """Trace model `name` built for `input_shape` exactly as training builds it, on the meta device."""
    with torch.device("meta"):
        model = create(name, input_shape, num_classes)
    return trace(model, input_shape)


def trace_target(
    target: str,
    input_shape: tuple[int, int, int] | None,
    *,
    batch: int = 1,
    num_classes: int | None = None,
    fit: bool = False,
) -> tuple[str, Trace]:
    """(model name, trace) for a registry name, a run directory or a .safetensors checkpoint.

    A checkpoint is traced as it was trained: its model, input shape and number of classes come
    from its metadata (`--input` may still ask what another input would do).
    """
    p = Path(target)
    if p.is_dir() or p.suffix == ".safetensors":
        from cnnctl.models.checkpoint import resolve_checkpoint
        from cnnctl.runtime import modelfile

        meta = modelfile.read(resolve_checkpoint(p))
        built_for = meta.input_shape
        if input_shape is None and batch == 1:
            return meta.model, trace_built(meta.model, built_for, meta.num_classes)
        with torch.device("meta"):
            model = create(meta.model, built_for, meta.num_classes)
        return meta.model, trace(model, input_shape or built_for, batch, built_for=built_for)
    if input_shape is None:
        input_shape = get_entry(target).default_input
    return target, trace_model(target, input_shape, batch=batch, num_classes=num_classes, fit=fit)
