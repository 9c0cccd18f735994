"""Per-epoch records, saved as `history.json` (format 1, see docs/formats.md). Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnctl.errors import CheckpointError
from cnnctl.io import read_json, write_json

FORMAT = 1


def save(path: str | Path, epochs: list[dict[str, Any]], **extra: Any) -> None:
    write_json(path, {"format": FORMAT, "epochs": epochs, **extra})


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    data = read_json(p, CheckpointError, f"{p} not found; is this a cnnctl run directory?")
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("epochs"), list):
        raise CheckpointError(f"{p} is not a cnnctl history (format {FORMAT})")
    return data
