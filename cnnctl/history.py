"""Per-epoch records, saved as `history.json` (format 1, see docs/formats.md). Torch-free."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnctl.errors import CheckpointError
from cnnctl.io import write_json

FORMAT = 1


def save(path: str | Path, epochs: list[dict[str, Any]], **extra: Any) -> None:
    write_json(path, {"format": FORMAT, "epochs": epochs, **extra})


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{p} not found; is this a cnnctl run directory?") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{p} is not valid JSON ({exc}); the run directory is damaged") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("epochs"), list):
        raise CheckpointError(f"{p} is not a cnnctl history (format {FORMAT})")
    return data
