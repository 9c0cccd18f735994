"""Shell completion (`cnnctl --install-completion`, Typer's): model names, recipe names, choices.

Completion runs `cnnctl` once per TAB, so it must stay quick: recipe names and choices need no
import at all; model names need the registry, which imports torch (~2 s), so they are kept in a
small cache file keyed by cnnctl's version ($CNNCTL_CACHE or ~/.cache/cnnctl), written once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from cnnctl import __version__


def choices(*values: str) -> Callable[[str], list[str]]:
    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


def _cache_file() -> Path:
    root = Path(os.environ.get("CNNCTL_CACHE", Path.home() / ".cache" / "cnnctl")).expanduser()
    return root / f"completion-models-{__version__}.json"


def model_names() -> list[str]:
    path = _cache_file()
    try:
        names = json.loads(path.read_text())
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return names
    except (OSError, ValueError):
        pass
    from cnnctl.io import write_json
    from cnnctl.models import list_models

    names = list_models("*")
    try:
        write_json(path, names)
    except OSError:
        pass  # a read-only home: complete without the cache
    return names


def complete_model(incomplete: str) -> list[str]:
    if incomplete.startswith("tv:"):
        return []  # ~80 names, one import of torchvision per TAB: `cnnctl models 'tv:*'` lists them
    return [n for n in model_names() if n.startswith(incomplete)]


def complete_recipe(incomplete: str) -> list[str]:
    from cnnctl.recipebook import names

    return [n for n in names() if n.startswith(incomplete)]
