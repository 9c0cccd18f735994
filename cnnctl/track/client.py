"""The one place that imports MLflow: its client, with every request bounded in time.

MLflow reads its HTTP limits from the environment on each request
(MLFLOW_HTTP_REQUEST_TIMEOUT, MLFLOW_HTTP_REQUEST_MAX_RETRIES); cnnctl sets them here unless the
user has, so that a training run's tracker never waits minutes on a server that went away
(MLflow's own defaults: 120 s and 7 retries with exponential back-off).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from cnnctl.errors import TrackingError, UsageError

URI_ENV = "MLFLOW_TRACKING_URI"
LABEL_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


def check_installed(what: str) -> None:
    """Refuse `what` in one line when MLflow is not installed (checked without importing it)."""
    if importlib.util.find_spec("mlflow") is None:
        raise UsageError(f"{what} needs MLflow: pip install 'cnnctl[mlflow]'")


def tracking_uri(given: str, what: str = "--track mlflow", flag: bool = True) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI; neither is one line naming both (MLflow's own
    fallback, a database in the current folder, would scatter runs wherever cnnctl is started).
    `flag`: whether the command has a --tracking-uri option."""
    uri = given or os.environ.get(URI_ENV, "")
    if not uri:
        how = "give --tracking-uri http://HOST:5000 or set " if flag else "set "
        raise UsageError(
            f"{what} needs a tracking server: {how}{URI_ENV} (e.g. http://HOST:5000, or a local sqlite:///mlflow.db; "
            "docs/track.md)"
        )
    return uri


def experiment_name(given: str, data_name: str) -> str:
    """--experiment, else the data set's name: a built-in set's name, a folder's name, a label
    file's name without its suffix."""
    if given:
        return given
    name = Path(data_name.rstrip("/")).name or data_name
    for suffix in LABEL_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def mlflow_client(uri: str, *, timeout_s: int, retries: int) -> Any:
    """An MlflowClient for `uri` (tracking and registry), its requests bounded as above."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow writes "View run ... at URL" to stdout when a run ends: stdout is cnnctl's results.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    os.environ["MLFLOW_PRINT_MODEL_URLS_ON_CREATION"] = "false"
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # its INFO/WARNING lines are not cnnctl's output
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: Any, name: str) -> str:
    """The id of the experiment `name`, created when it does not exist yet (by another process
    meanwhile too: the create then fails with RESOURCE_ALREADY_EXISTS and the lookup answers)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:  # noqa: BLE001 - MLflow's own exception for "already exists"
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


NETWORK = ("Connection refused", "timed out", "Name or service not known", "Connection reset", "Connection aborted")


def first_line(exc: BaseException) -> str:
    """An MLflow or HTTP error as one short line (a network failure as its cause alone)."""
    text = str(getattr(exc, "message", "") or exc).strip()
    cause = next((c for c in NETWORK if c in text), None)
    if cause:
        return cause.lower()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:240]


def failed(what: str, uri: str, exc: BaseException) -> TrackingError:
    return TrackingError(
        f"{what}: the MLflow server at {uri} failed ({first_line(exc)}); check that it runs and answers"
    )
