"""`--track mlflow`, `cnnctl track sync`, `export --register` and `models:/` URIs against a real
MLflow server on loopback (conftest.py), through the real CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CIFAR_MINI, PETS_MINI, ROOT, run_cli
from tests.track.conftest import MlflowServer


def metric_steps(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


@pytest.fixture(scope="module")
def tracked_run(mlflow_server, tmp_path_factory) -> Path:
    """model-a trained 3 epochs on the CIFAR-10 photos (with a test split) with --track mlflow."""
    out = tmp_path_factory.mktemp("tracked") / "c10"
    proc = run_cli(
        "train", "model-a", "--data", CIFAR_MINI, "--epochs", "3", "--out", out,
        "--track", "mlflow", "--tracking-uri", mlflow_server.url, "--experiment", "cnnctl-tests",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "tracking:" not in proc.stderr, proc.stderr
    assert "View run" not in proc.stdout and "mlflow" not in proc.stdout.lower(), proc.stdout  # stdout is cnnctl's
    return out


def test_a_tracked_run_sends_params_metrics_tags_and_files(tracked_run, tracking):
    record = json.loads((tracked_run / "mlflow.json").read_text())
    history = json.loads((tracked_run / "history.json").read_text())
    config = json.loads((tracked_run / "config.json").read_text())
    run = tracking.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "c10"
    assert tracking.get_experiment(run.info.experiment_id).name == "cnnctl-tests"
    # The resolved config as params, the hardware plan and versions as tags.
    assert run.data.params["model"] == "model-a" and float(run.data.params["lr"]) == config["lr"]
    assert run.data.params["resolved_epochs"] == "3" and run.data.params["preprocess.size"] == "[32, 32]"
    assert run.data.tags["cnnctl.hardware.device"] == "cpu" and run.data.tags["cnnctl.version.cnnctl"]
    # Every epoch's metrics with step = epoch, equal to history.json; the test metrics once.
    for key in ("val_acc", "train_loss", "lr"):
        assert metric_steps(tracking, run.info.run_id, key) == pytest.approx(
            {r["epoch"]: r[key] for r in history["epochs"]}
        )
    assert run.data.metrics["test_acc"] == pytest.approx(history["test"]["acc"])
    assert history["test"]["confusion"] and history["test"]["classes"][0] == "airplane"
    files = {f.path for f in tracking.list_artifacts(run.info.run_id)}
    assert {"config.json", "history.json", "splits.json.gz"} <= files
    if importlib.util.find_spec("matplotlib"):  # the plot extra: the pictures too
        assert {"curves.png", "confusion.png"} <= files
    # The run id in the run directory and in the checkpoint's Metadata.
    from cnnctl.runtime import modelfile

    link = modelfile.read(tracked_run / "model.safetensors").tracking
    assert link == {"tracker": "mlflow", "uri": tracking.tracking_uri, "experiment_id": run.info.experiment_id,
                    "run_id": run.info.run_id}  # fmt: skip
    # A second sync finds nothing to send.
    again = run_cli("track", "sync", tracked_run, "--json")
    assert again.returncode == 0, again.stderr
    sent = json.loads(again.stdout)["sent"]
    assert sent == {"created": False, "params": 0, "epochs": 0, "test": False, "files": 0, "status": ""}


def test_register_versions_alias_and_models_uris_answer_as_the_file(tracked_run, tracking, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCTL_CACHE", str(tmp_path / "cache"))
    first = run_cli("export", tracked_run, "--register", "c10-tests", "--alias", "champion", "--json")
    assert first.returncode == 0, first.stderr
    reg1 = json.loads(first.stdout)["registered"]
    pixels = tmp_path / "pixels.onnx"
    second = run_cli(
        "export", tracked_run, "--input", "uint8", "-o", pixels, "--register", "c10-tests", "--alias", "champion",
        "--json",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    reg2 = json.loads(second.stdout)["registered"]
    assert (reg1["version"], reg2["version"]) == ("1", "2") and reg2["variant"] == "uint8-input"
    # Logged in the training run, through MLflow's ONNX flavour, with a signature and cnnctl's Metadata.
    run_id = json.loads((tracked_run / "mlflow.json").read_text())["run_id"]
    assert reg1["run_id"] == run_id and reg1["linked_to_training_run"]
    mv = tracking.get_model_version("c10-tests", "2")
    assert mv.run_id == run_id and mv.tags["cnnctl.sha256"] == reg2["sha256"]
    import mlflow

    info = mlflow.models.get_model_info("models:/c10-tests/2")
    assert "onnx" in info.flavors and info.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"
    assert info.metadata["cnnctl"]["class_names"][0] == "airplane"
    # The alias moved with the second export; a third command moves it back.
    assert tracking.get_model_version_by_alias("c10-tests", "champion").version == "2"
    files = sorted((CIFAR_MINI / "test").rglob("*.jpg"))[:12]

    def predicted(model) -> list[dict]:
        proc = run_cli("predict", model, *files, "--json", "-k", "10")
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    def probs(rows: list[dict]) -> np.ndarray:
        return np.array([[t["prob"] for t in sorted(r["top"], key=lambda t: t["label"])] for r in rows])

    np.testing.assert_allclose(probs(predicted("models:/c10-tests@champion")), probs(predicted(pixels)), atol=1e-6)
    np.testing.assert_allclose(
        probs(predicted("models:/c10-tests/1")), probs(predicted(tracked_run / "model.onnx")), atol=1e-6
    )
    tracking.set_registered_model_alias("c10-tests", "champion", "1")
    np.testing.assert_allclose(
        probs(predicted("models:/c10-tests@champion")), probs(predicted(tracked_run / "model.onnx")), atol=1e-6
    )
    # Downloaded once into the cache, checked by hash: a damaged cached copy is fetched again.
    cached = tmp_path / "cache" / "registry" / reg1["sha256"] / "model.onnx"
    assert cached.is_file() and (cached.parent / "splits.json.gz").is_file()
    stamp = cached.stat().st_mtime_ns
    predicted("models:/c10-tests/1")
    assert cached.stat().st_mtime_ns == stamp
    cached.write_bytes(b"damaged")
    np.testing.assert_allclose(
        probs(predicted("models:/c10-tests/1")), probs(predicted(tracked_run / "model.onnx")), atol=1e-6
    )
    # eval of a registered model judges it on the validation split its run recorded, as the file.
    by_uri = run_cli("eval", "models:/c10-tests/1", "--split", "val", "--json")
    by_file = run_cli("eval", tracked_run / "model.onnx", "--split", "val", "--json")
    assert by_uri.returncode == 0 and by_file.returncode == 0, by_uri.stderr + by_file.stderr
    assert "no split manifest" not in by_uri.stderr, by_uri.stderr
    a, b = json.loads(by_uri.stdout), json.loads(by_file.stdout)
    assert a["top1"] == b["top1"] and a["images"] == b["images"] and a["registered"]["version"] == "1"
    assert a["target"] == "models:/c10-tests/1"


def test_serve_reports_the_registered_version(tracked_run, tracking, tmp_path, monkeypatch):
    pytest.importorskip("uvicorn", reason="cnnctl serve needs the serve extra (pip install -e '.[serve]')")
    import httpx

    from tests.serve.test_server import Server

    monkeypatch.setenv("CNNCTL_CACHE", str(tmp_path / "cache"))
    proc = run_cli(
        "export", tracked_run, "-o", tmp_path / "m.onnx", "--register", "served", "--alias", "prod", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    version = json.loads(proc.stdout)["registered"]["version"]
    server = Server(Path("models:/served@prod"), env={"MLFLOW_TRACKING_URI": tracking.tracking_uri,
                                                     "CNNCTL_CACHE": str(tmp_path / "cache")})  # fmt: skip
    try:
        meta = httpx.get(server.url + "/metadata").json()
        assert meta["version"] == version and meta["registered"]["alias"] == "prod" and meta["name"] == "served"
        assert httpx.get(f"{server.url}/v2/models/served").json()["versions"] == [version]
        r = httpx.get(f"{server.url}/v2/models/served/versions/{version}/ready")
        assert r.status_code == 200, r.text
        assert httpx.get(f"{server.url}/v2/models/served/versions/99/ready").status_code == 404
        tensor = {"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}
        r = httpx.post(f"{server.url}/v2/models/served/versions/{version}/infer", json={"inputs": [tensor]})
        assert r.status_code == 200 and r.json()["model_version"] == version, r.text
    finally:
        assert server.stop() == 0


def test_a_server_killed_mid_run_leaves_a_finished_run_and_one_line(tmp_path):
    pytest.importorskip("mlflow", reason="MLflow is not installed (pip install -e '.[mlflow]')")
    server = MlflowServer(tmp_path).start()
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnctl", "train", "model-a", "--data", str(PETS_MINI), "--image-size", "64",
         "--epochs", "60", "--out", str(run_dir), "--track", "mlflow", "--tracking-uri", server.url],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads((run_dir / "mlflow.json").read_text())["epochs_sent"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        server.kill()
        out, err = proc.communicate(timeout=300)
    finally:
        server.kill()
    assert proc.returncode == 0, err
    lines = [line for line in err.splitlines() if "tracking" in line.lower() or "mlflow" in line.lower()]
    assert len(lines) == 1 and "cnnctl track sync" in lines[0], err
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["epochs"]) == 60 and history["stopped"] == "completed"
    from cnnctl.runtime import modelfile

    assert modelfile.read(run_dir / "model.safetensors").training is not None
    record = json.loads((run_dir / "mlflow.json").read_text())
    assert 1 <= len(record["epochs_sent"]) < 60 and record["status"] == "FINISHED" and not record["status_sent"]
    # The server back (same store, same address): `track sync` sends the rest, once.
    back = MlflowServer(tmp_path, server.port).start()
    try:
        synced = run_cli("track", "sync", run_dir, "--json")
        assert synced.returncode == 0, synced.stderr
        assert json.loads(synced.stdout)["sent"]["status"] == "FINISHED"
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=server.url)
        steps = metric_steps(client, record["run_id"], "val_acc")
        assert steps == pytest.approx({r["epoch"]: r["val_acc"] for r in history["epochs"]})
        assert client.get_run(record["run_id"]).info.status == "FINISHED"
    finally:
        back.kill()


def test_tracking_refusals_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cases = [
        (("train", "model-a", "--data", PETS_MINI, "--track", "mlflow", "--out", tmp_path / "a"), "MLFLOW_TRACKING_URI"),
        (("train", "model-a", "--data", PETS_MINI, "--tracking-uri", "http://x:5000", "--out", tmp_path / "b"),
         "go with --track mlflow"),
        (("train", "model-a", "--data", PETS_MINI, "--track", "mlflow", "--tracking-uri", "http://u:secret@x:5000",
          "--out", tmp_path / "c"), "MLFLOW_TRACKING_PASSWORD"),
        (("predict", "models:/a/b/c", PETS_MINI), "models:/NAME/VERSION or models:/NAME@ALIAS"),
        (("predict", "models:/pets@champion", PETS_MINI), "set MLFLOW_TRACKING_URI"),
        (("track", "sync", tmp_path), "not a cnnctl run directory"),
        (("export", tmp_path, "--alias", "x"), "go with --register"),
    ]  # fmt: skip
    for args, words in cases:
        proc = run_cli(*args)
        assert proc.returncode != 0 and words in proc.stderr, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_a_search_tracks_each_trial_tagged_with_its_study(tracking, tmp_path):
    from tests.tune.test_tune import BASE, _space, _tune

    out = tmp_path / "study"
    info = _tune(*BASE, "--epochs", "1", "--space", _space(tmp_path), "--trials", "2", "--out", out,
                 "--track", "mlflow", "--tracking-uri", tracking.tracking_uri, "--experiment", "tune-tests")  # fmt: skip
    assert info["finished"] == 2
    experiment = tracking.get_experiment_by_name("tune-tests")
    runs = tracking.search_runs([experiment.experiment_id], "tags.`cnnctl.study` = 'study'")
    assert sorted(r.data.tags["cnnctl.trial"] for r in runs) == ["0", "1"]
    for r in runs:
        trial = out / f"trial-{int(r.data.tags['cnnctl.trial']):04d}"
        assert json.loads((trial / "mlflow.json").read_text())["run_id"] == r.info.run_id
        assert (
            r.info.status == "FINISHED"
            and float(r.data.params["lr"]) == json.loads((trial / "config.json").read_text())["lr"]
        )


def test_a_server_that_never_answers_is_bounded_and_said_once(tmp_path):
    """A tracking server that accepts connections and never answers (hung, or a black-holed
    proxy): every request gives up after its bound, training goes on, one line is said."""
    pytest.importorskip("mlflow", reason="MLflow is not installed (pip install -e '.[mlflow]')")
    import socket
    import threading

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(hung.accept()[0]) for _ in range(64)], daemon=True).start()
    url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    started = time.monotonic()
    proc = run_cli("train", "model-a", "--data", PETS_MINI, "--epochs", "3", "--out", tmp_path / "run",
                   "--track", "mlflow", "--tracking-uri", url, subprocess_=True)  # fmt: skip
    took = time.monotonic() - started
    hung.close()
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "tracking" in line.lower() or "mlflow" in line.lower()]
    assert len(lines) == 1 and "timed out" in lines[0] and "cnnctl track sync" in lines[0], proc.stderr
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())["epochs"]) == 3
    assert took < 60, took  # 5 s per request, 20 s at most at the end: never MLflow's 120 s x 7 retries


def test_a_resumed_run_goes_on_in_its_mlflow_run(mlflow_server, tracking, tmp_path):
    out = tmp_path / "run"
    common = ("--data", PETS_MINI, "--out", out, "--track", "mlflow", "--tracking-uri", mlflow_server.url)
    assert run_cli("train", "model-a", "--epochs", "2", *common).returncode == 0
    first = json.loads((out / "mlflow.json").read_text())["run_id"]
    again = run_cli("train", "--resume", out, "--epochs", "4")
    assert again.returncode == 0, again.stderr
    record = json.loads((out / "mlflow.json").read_text())
    assert record["run_id"] == first and record["epochs_sent"] == [1, 2, 3, 4] and record["status_sent"]
    history = json.loads((out / "history.json").read_text())["epochs"]
    assert metric_steps(tracking, first, "val_loss") == pytest.approx({r["epoch"]: r["val_loss"] for r in history})
    assert tracking.get_run(first).info.status == "FINISHED"
