"""RUN/mlflow.json: which MLflow run a run directory is tracked in, and what of it has arrived.

Written atomically by whoever sends (the training run's tracker thread, or `cnnctl track sync`),
after each request that succeeded, so that a later sync sends exactly what is missing: the params
and tags once, each epoch's metrics once, the test metrics once, each file again only when its
bytes changed, and the run's end. Torch-free and mlflow-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnctl.errors import RunDirError
from cnnctl.io import read_json, write_json
from cnnctl.runtime import modelfile

FILE = "mlflow.json"


@dataclass
class TrackRecord:
    tracking_uri: str
    experiment: str
    run_id: str = ""
    experiment_id: str = ""
    params_sent: bool = False
    epochs_sent: list[int] = field(default_factory=list)
    test_sent: bool = False
    files_sent: dict[str, str] = field(default_factory=dict)  # name -> sha256 of the bytes sent
    status: str = ""  # how the run ended, as the trainer saw it ("" while it runs)
    status_sent: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # extra tags (a search's study and trial)
    send_cpu_s: float = 0.0  # CPU seconds the tracker thread spent sending while the run trained (its cost)

    def link(self) -> dict[str, str] | None:
        """What a model file's Metadata keeps of its tracking run (None until the run exists)."""
        if not self.run_id:
            return None
        return {
            "tracker": "mlflow",
            "uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
        }

    def unsent(self, epochs: list[int]) -> list[int]:
        sent = set(self.epochs_sent)
        return [e for e in epochs if e not in sent]

    def save(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / FILE, dataclasses.asdict(self))


def load(run_dir: Path) -> TrackRecord | None:
    """The run directory's record, or None when the run was never tracked."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    raw: Any = read_json(path, RunDirError, f"{path}: no such file")
    names = {f.name for f in dataclasses.fields(TrackRecord)}
    if not isinstance(raw, dict) or not {"tracking_uri", "experiment"} <= set(raw):
        raise RunDirError(f"{path} is not a cnnctl tracking record; delete it to track this run afresh")
    return TrackRecord(**{k: v for k, v in raw.items() if k in names})


def stamp(run_dir: Path, record: TrackRecord) -> None:
    """Write the tracking link into the run's checkpoints' Metadata where it is missing (a run
    whose MLflow run was created after its last checkpoint, or by `cnnctl track sync`)."""
    link = record.link()
    for name in ("model.safetensors", "last.safetensors"):
        path = Path(run_dir) / name
        if link is None or not path.is_file():
            continue
        meta = modelfile.read(path)
        if meta.tracking != link:
            modelfile.write(path, meta.replace(tracking=link))
