"""`--track mlflow` during a training run: a background thread sends the run directory to MLflow.

Training never waits on the tracking server: after each epoch the trainer only pokes the thread
(`epoch`), which sends whatever the run directory holds that has not arrived (sender.py). Every
request is bounded in time (client.py) and not retried in place: what failed is sent with the
next epoch, at the end, or later by `cnnctl track sync RUN`. The first failure is said once, as
one line on stderr; the run goes on the same. At the end, `close` waits a bounded time for the
last send (files and status) and says what is left when the server did not take it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnctl.track import client as tracking
from cnnctl.track import record as records
from cnnctl.track.record import TrackRecord
from cnnctl.track.sender import Sender

REQUEST_TIMEOUT_S = 5  # each HTTP request of a training run's tracker
CLOSE_WAIT_S = 20.0  # how long the end of a run waits for its last send


class Tracker:
    def __init__(self, run_dir: Path, record: TrackRecord, say: Callable[[str], None]) -> None:
        self.run_dir, self.record, self.say = Path(run_dir), record, say
        self.lock = threading.Lock()
        self.jobs: queue.Queue[bool | None] = queue.Queue()
        self.trouble = ""  # the first failure, said once
        with self.lock:
            record.save(self.run_dir)
        # MLflow is imported here, before the first epoch starts (about 2 s of Python on 2 cores that
        # would otherwise compete with the epoch loop for the interpreter), and only once.
        try:
            client = tracking.mlflow_client(record.tracking_uri, timeout_s=REQUEST_TIMEOUT_S, retries=0)
        except Exception as exc:  # noqa: BLE001 - an MLflow that cannot start is said, never raised
            client = None
            self._tell(f"MLflow could not start ({tracking.first_line(exc)})")
        self.thread = threading.Thread(target=self._work, args=(client,), name="cnnctl-track", daemon=True)
        self.thread.start()
        self.jobs.put(False)  # create the MLflow run (the config follows after the first epoch)

    def epoch(self) -> None:
        """An epoch ended (history.json is on disk): send it, in the background."""
        self.jobs.put(False)

    def link(self) -> dict[str, str] | None:
        with self.lock:
            return self.record.link()

    def close(self, status: str, wait_s: float = CLOSE_WAIT_S) -> None:
        """The run ended (`status`: FINISHED, KILLED or FAILED): send the rest, waiting at most
        `wait_s` seconds; anything not sent by then waits for `cnnctl track sync`."""
        with self.lock:
            self.record.status = status
            self.record.save(self.run_dir)
        self.jobs.put(True)
        self.jobs.put(None)
        self.thread.join(wait_s)
        if self.thread.is_alive():
            self._tell(
                f"the MLflow server at {self.record.tracking_uri} did not take the run's end within {wait_s:.0f} s"
            )

    def _work(self, client: Any) -> None:
        if client is None:
            return
        sender = Sender(client, self.run_dir, self.record, self.lock)
        while True:
            final = self.jobs.get()
            if final is None:
                return
            stop = False
            while not stop:  # pokes that piled up while a send was under way: one send covers them
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                stop = nxt is None
                final = final or bool(nxt)
            cpu = time.thread_time()
            try:
                sender.send(final=final)
            except Exception as exc:  # noqa: BLE001 - whatever MLflow or the network raise
                self._tell(f"the MLflow server at {self.record.tracking_uri} failed ({tracking.first_line(exc)})")
            if not final:  # the last send (files, pictures, status) comes after training
                with self.lock:
                    self.record.send_cpu_s = round(self.record.send_cpu_s + time.thread_time() - cpu, 4)
                    self.record.save(self.run_dir)
            if stop:
                return

    def _tell(self, why: str) -> None:
        with self.lock:
            first, self.trouble = not self.trouble, self.trouble or why
        if first:
            self.say(
                f"tracking: {why}; training goes on; send what did not arrive later: cnnctl track sync {self.run_dir}"
            )


def start(uri: str, experiment: str, run_dir: Path, tags: dict[str, str], say: Callable[[str], None]) -> Tracker:
    """The tracker of a run directory: a resumed run goes on in the MLflow run it was tracked in
    (same server and experiment); anything else starts a new MLflow run."""
    record = records.load(run_dir)
    if record is not None and record.run_id and (record.tracking_uri, record.experiment) == (uri, experiment):
        record.status = ""  # running again: the sender marks the MLflow run RUNNING again
    else:
        record = TrackRecord(tracking_uri=uri, experiment=experiment, tags=dict(tags))
    return Tracker(run_dir, record, say)
