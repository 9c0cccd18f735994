"""A real MLflow tracking server on loopback (`mlflow server`, SQLite backend store, local artifact
root), started by the tests that need one; they skip, saying why, where it cannot start."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1:PORT with its store in `folder`; `kill` and `start` again."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
        log = open(self.folder / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                exe,
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.folder / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.folder / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # No job runner (its huey consumers: 5 more processes that tracking never uses).
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        tail = (self.folder / "server.log").read_text(errors="replace")[-400:]
        self.kill()
        pytest.skip(f"mlflow server did not start on {self.url}: {tail}")

    def kill(self) -> None:
        """SIGKILL the server and every process under it (what a crash or a lost machine looks
        like). Its uvicorn and job processes start sessions of their own, so the process group
        is not enough: the tree is read from /proc first."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def descendants(root: int) -> list[int]:
    """Every process below `root` (children first found, from /proc/*/stat's parent ids)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        kids = [pid for pid, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """Stopped when its module's tests end: a server left running changes the memory the later
    tests' runs see, and with it their automatic eval batch (the determinism tests compare sums)."""
    pytest.importorskip("mlflow", reason="MLflow is not installed (pip install -e '.[mlflow]')")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.kill()


@pytest.fixture
def tracking(mlflow_server, monkeypatch):
    """The server's URL in MLFLOW_TRACKING_URI (for `models:/` arguments), and an MlflowClient."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    return MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
