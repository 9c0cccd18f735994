"""`cnnctl track sync RUN`: one blocking send of a run directory, under the run's lock."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cnnctl.errors import RunDirError, UsageError
from cnnctl.io import RunLock, read_json
from cnnctl.track import client as tracking
from cnnctl.track import record as records
from cnnctl.track.sender import Sender

SYNC_TIMEOUT_S, SYNC_RETRIES = 30, 2


def sync_run(run_dir: str, uri: str = "", experiment: str = "") -> dict[str, Any]:
    """Send what RUN's MLflow run lacks; a run never tracked starts its MLflow run here. A run
    that is not training (its lock is free) and never finished is marked KILLED."""
    path = Path(run_dir)
    config = read_json(path / "config.json", RunDirError, f"{run_dir} is not a cnnctl run directory (no config.json)")
    tracking.check_installed("cnnctl track sync")
    with RunLock(path):  # refused while a run trains in it: its own tracker sends
        record = records.load(path)
        if record is None:
            name = (config.get("data_summary") or {}).get("name") or config.get("data", "")
            record = records.TrackRecord(
                tracking_uri=tracking.tracking_uri(uri, "cnnctl track sync of a run not tracked yet"),
                experiment=tracking.experiment_name(experiment, name),
            )
        elif (uri and uri != record.tracking_uri) or (experiment and experiment != record.experiment):
            raise UsageError(
                f"{run_dir} is tracked in experiment {record.experiment!r} at {record.tracking_uri}; to send it elsewhere "
                f"as a new MLflow run, delete {path / records.FILE} first"
            )
        if not record.status:
            record.status = "FINISHED" if _finished(path) else "KILLED"
        client = tracking.mlflow_client(record.tracking_uri, timeout_s=SYNC_TIMEOUT_S, retries=SYNC_RETRIES)
        try:
            sent = Sender(client, path, record).send(final=True)
        except Exception as exc:  # noqa: BLE001 - whatever MLflow or the network raise: one line
            raise tracking.failed(f"cnnctl track sync {run_dir}", record.tracking_uri, exc) from None
        records.stamp(path, record)
    return {
        "run_dir": str(path),
        "tracking_uri": record.tracking_uri,
        "experiment": record.experiment,
        "run_id": record.run_id,
        "sent": dataclasses.asdict(sent),
        "epochs_tracked": len(record.epochs_sent),
        "status": record.status,
    }


def _finished(run_dir: Path) -> bool:
    """Whether the run reached its end (history.json says why it stopped)."""
    try:
        history = json.loads((run_dir / "history.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(history, dict) and "stopped" in history
