"""The one path that sends a run directory to its MLflow run, and records what arrived.

The run directory is the source of truth: config.json (params, and the hardware plan and
versions as tags), history.json (every epoch's metrics with step = epoch, the test metrics),
the run's files as artifacts, and how it ended as the MLflow run's status. `Sender.send` sends
whatever of that the record (RUN/mlflow.json) does not list as arrived, saving the record after
each request that succeeded; a training run's tracker calls it after every epoch, and
`cnnctl track sync RUN` calls it once to send what a lost server missed.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.io import file_sha256
from cnnctl.track.client import experiment_id as experiment_of
from cnnctl.track.record import TrackRecord

FILES = ("config.json", "history.json", "splits.json.gz", "distill.json", "history.csv", "steps.csv")
TAG_SECTIONS = {"hardware": "cnnctl.hardware.", "versions": "cnnctl.version."}
MAX_PARAMS, MAX_METRICS, MAX_VALUE = 100, 1000, 6000  # MLflow's log_batch limits


@dataclass
class Sent:
    """What one `send` delivered."""

    created: bool = False
    params: int = 0
    epochs: int = 0
    test: bool = False
    files: int = 0
    status: str = ""


def params_and_tags(config: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """config.json as MLflow params (sections flattened as `section.key`; lists as JSON) and tags
    (the hardware plan as cnnctl.hardware.*, the versions as cnnctl.version.*)."""
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    for key, value in config.items():
        if key in TAG_SECTIONS and isinstance(value, dict):
            tags.update({TAG_SECTIONS[key] + k: _text(v) for k, v in value.items()})
        elif isinstance(value, dict):
            params.update({f"{key}.{k}": _text(v) for k, v in value.items()})
        else:
            params[key] = _text(value)
    return params, tags


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A history record's numbers (loss, accuracy, lr, seconds...), without its epoch number."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"
    }


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_VALUE]


class Sender:
    """Sends one run directory to one MLflow run through `client` (an MlflowClient)."""

    def __init__(self, client: Any, run_dir: Path, record: TrackRecord, lock: threading.Lock | None = None) -> None:
        self.client, self.run_dir, self.record = client, Path(run_dir), record
        self.lock = lock or threading.Lock()

    def send(self, final: bool) -> Sent:
        """Send what has not arrived; with `final` (or once the run has ended) its files and its
        status too. Raises whatever MLflow raises; the record keeps what arrived before that."""
        sent = Sent()
        config = self._json("config.json")
        history = self._json("history.json") or {}
        sent.created = self._ensure_run(config)
        if not self.record.status and self.record.status_sent:  # a resumed run: running again
            self.client.update_run(self.record.run_id, status="RUNNING")
            self._update(status_sent=False)
        if config is not None and not self.record.params_sent:
            sent.params = self._params(config)
        sent.epochs = self._epochs(history.get("epochs", []))
        status = self.record.status or ("FINISHED" if "stopped" in history else "")
        if (final or status) and isinstance(history.get("test"), dict) and not self.record.test_sent:
            sent.test = self._test(history["test"], history.get("epochs", []))
        if final or status:
            sent.files = self._files(history)
        if status and not self.record.status_sent:
            self.client.set_terminated(self.record.run_id, status=status)
            self._update(status=status, status_sent=True)
            sent.status = status
        return sent

    # -- one request each, then the record -------------------------------------------------
    def _ensure_run(self, config: dict[str, Any] | None) -> bool:
        if self.record.run_id:
            return False
        experiment_id = experiment_of(self.client, self.record.experiment)
        config_file = self.run_dir / "config.json"
        started = config_file.stat().st_mtime if config is not None else time.time()
        tags = {
            "mlflow.source.name": "cnnctl",
            "mlflow.source.type": "LOCAL",
            "cnnctl.run_dir": str(self.run_dir.resolve()),
            **self.record.tags,
        }
        run = self.client.create_run(
            experiment_id, start_time=int(started * 1000), tags=tags, run_name=self.run_dir.name
        )
        self._update(run_id=run.info.run_id, experiment_id=experiment_id)
        return True

    def _params(self, config: dict[str, Any]) -> int:
        from mlflow.entities import Param, RunTag

        params, tags = params_and_tags(config)
        items = sorted(params.items())
        for i in range(0, max(len(items), 1), MAX_PARAMS):
            chunk = [Param(k, v) for k, v in items[i : i + MAX_PARAMS]]
            tag_chunk = [RunTag(k, v) for k, v in sorted(tags.items())] if i == 0 else []
            self.client.log_batch(self.record.run_id, params=chunk, tags=tag_chunk)
        self._update(params_sent=True)
        return len(items)

    def _epochs(self, records: list[dict[str, Any]]) -> int:
        from mlflow.entities import Metric

        by_epoch = {int(r["epoch"]): r for r in records if isinstance(r, dict) and "epoch" in r}
        todo = self.record.unsent(sorted(by_epoch))
        now = int(time.time() * 1000)
        batch: list[Any] = []
        done: list[int] = []
        for epoch in todo:
            batch += [Metric(k, v, now, epoch) for k, v in epoch_metrics(by_epoch[epoch]).items()]
            done.append(epoch)
            if len(batch) >= MAX_METRICS - 100 or epoch == todo[-1]:
                self.client.log_batch(self.record.run_id, metrics=batch)
                self._update(epochs_sent=sorted({*self.record.epochs_sent, *done}))
                batch, done = [], []
        return len(todo)

    def _test(self, test: dict[str, Any], records: list[dict[str, Any]]) -> bool:
        from mlflow.entities import Metric

        step = int(test.get("epoch") or (records[-1]["epoch"] if records else 0))
        now = int(time.time() * 1000)
        metrics = [Metric(f"test_{k}", v, now, step) for k, v in epoch_metrics(test).items()]
        if metrics:
            self.client.log_batch(self.record.run_id, metrics=metrics)
        self._update(test_sent=True)
        return True

    def _files(self, history: dict[str, Any]) -> int:
        count = 0
        with _pictures(history) as pictures:
            present = [self.run_dir / n for n in FILES if (self.run_dir / n).is_file()]
            for path in [*present, *pictures]:
                digest = file_sha256(path)
                if self.record.files_sent.get(path.name) == digest:
                    continue
                self.client.log_artifact(self.record.run_id, str(path))
                self._update(files_sent={**self.record.files_sent, path.name: digest})
                count += 1
        return count

    def _json(self, name: str) -> Any:
        path = self.run_dir / name
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # not written yet (or being replaced): sent on a later call
            return None

    def _update(self, **changes: Any) -> None:
        with self.lock:
            for key, value in changes.items():
                setattr(self.record, key, value)
            self.record.save(self.run_dir)


@contextmanager
def _pictures(history: dict[str, Any]) -> Iterator[list[Path]]:
    """curves.png (loss and accuracy per epoch) and, for a run tested on a test split,
    confusion.png, drawn into a temporary folder where matplotlib is installed (`cnnctl[plot]`)."""
    records = history.get("epochs") or []
    if not records or importlib.util.find_spec("matplotlib") is None:
        yield []
        return
    from cnnctl.evaluate.plots import plot_confusion, plot_histories

    with tempfile.TemporaryDirectory(prefix="cnnctl-track-") as tmp:
        made = [Path(tmp) / "curves.png"]
        plot_histories({"run": records}, made[0])
        test = history.get("test") or {}
        if test.get("confusion") and test.get("classes"):
            made.append(Path(tmp) / "confusion.png")
            plot_confusion(test["confusion"], test["classes"], made[-1])
        yield made
