"""The model registry: tiny decorated factory functions, looked up by name.

Torch-free on import. A factory takes the input shape (C, H, W) and the number of classes and
returns an `nn.Module` whose head was sized by a dummy forward pass, so every model works for
any input it can physically take. `tv:NAME` resolves any torchvision classification model,
`timm:NAME` any timm model (with timm installed).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnnctl.errors import ModelError
from cnnctl.specs import format_shape

TORCHVISION_PREFIX = "tv:"
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one architecture."""

    name: str
    factory: Callable[..., Any]
    description: str
    default_input: tuple[int, int, int]
    num_classes: int
    source: str
    kwargs: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register(
    name: str,
    *,
    description: str,
    default_input: tuple[int, int, int],
    num_classes: int = 10,
    source: str,
    **kwargs: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register `factory(in_shape, num_classes, **kwargs)` under `name`."""

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(
            name,
            factory,
            description,
            (default_input[0], default_input[1], default_input[2]),
            num_classes,
            source,
            dict(kwargs),
        )
        return factory

    return wrap


def _ensure_loaded() -> None:
    # The architecture modules import torch; load them only when the registry is first used.
    import cnnctl.models.zoo  # noqa: F401


def list_models(pattern: str = "*", *, include_torchvision: bool = False) -> list[str]:
    """Registered names matching a shell-style wildcard, in registration order.

    torchvision models are listed only on request (or when the pattern starts with "tv:"),
    because there are ~80 of them and most are far too large for a CPU test suite; timm's 1,300
    only for a pattern that starts with "timm:".
    """
    _ensure_loaded()
    if pattern.startswith(TIMM_PREFIX):
        from cnnctl.models.timm_models import timm_names

        return timm_names(pattern)
    names = [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)]
    if include_torchvision or pattern.startswith(TORCHVISION_PREFIX):
        names += [n for n in torchvision_names() if fnmatch.fnmatchcase(n, pattern)]
    return names


def torchvision_names() -> list[str]:
    """`tv:NAME` for every torchvision image classification model."""
    import torchvision.models as tvm

    return [TORCHVISION_PREFIX + n for n in sorted(tvm.list_models(module=tvm))]


def get_entry(name: str) -> ModelEntry:
    """The registry entry for `name`; unknown names get close-match suggestions."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(TORCHVISION_PREFIX):
        from cnnctl.models.zoo import torchvision_entry

        return torchvision_entry(name)
    if name.startswith(TIMM_PREFIX):
        from cnnctl.models.timm_models import timm_entry

        return timm_entry(name)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ModelError(
        f"unknown model {name!r}: {hint}run `cnnctl models` to list them, "
        f"or use tv:NAME for a torchvision model, timm:NAME for a timm one"
    )


def create(
    name: str,
    in_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> Any:
    """Build model `name` for `in_shape` (C, H, W) and `num_classes` (defaults: the entry's)."""
    entry = get_entry(name)
    shape = tuple(in_shape) if in_shape is not None else entry.default_input
    classes = int(num_classes) if num_classes is not None else entry.num_classes
    if classes < 1:
        raise ModelError(f"--num-classes must be at least 1, got {classes}")
    try:
        return entry.factory(shape, classes, **{**entry.kwargs, **kwargs})
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{name} cannot be built for input {format_shape(shape)}: {first}; "
            f"use a larger input (its default is {format_shape(entry.default_input)})"
        ) from exc
