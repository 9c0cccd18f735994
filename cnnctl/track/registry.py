"""The MLflow model registry: `cnnctl export --register NAME [--alias A]` logs a verified export
through MLflow's ONNX flavour and registers it; `models:/NAME/VERSION` and `models:/NAME@ALIAS`
model arguments (predict, eval, serve) resolve to the registered file.

A registered version carries the file's SHA-256 as a tag (`cnnctl.sha256`), and the training
run's split manifest (splits.json.gz) beside it when the export had one, so that `cnnctl eval
models:/...` judges the model on the validation images its run recorded. Resolving asks the
registry which version a URI means (an alias moves, and a deleted model's numbers come back), then
uses the local cache ($CNNCTL_CACHE/registry/SHA256/model.onnx) when it holds those bytes, else
downloads the files once and checks them against the tags before they go into the cache.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.data import manifest
from cnnctl.data.layout import cache_root
from cnnctl.errors import CheckpointError, CnnctlError, TrackingError, UsageError
from cnnctl.io import atomic_path, file_sha256
from cnnctl.runtime import modelfile
from cnnctl.runtime.metadata import Metadata
from cnnctl.track import client as tracking

PREFIX = "models:/"
SHA_TAG, SPLITS_TAG, VARIANT_TAG = "cnnctl.sha256", "cnnctl.splits_sha256", "cnnctl.variant"
MODEL_FILE = "model.onnx"
TIMEOUT_S, RETRIES = 60, 2
READY_WAIT_S = 120.0
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[A-Za-z0-9_.-]+))$")


@dataclass(frozen=True)
class Registered:
    """One registered model version, as a local file."""

    name: str
    version: str
    alias: str
    path: str
    sha256: str
    run_id: str
    tracking_uri: str

    @property
    def uri(self) -> str:
        return f"{PREFIX}{self.name}/{self.version}"

    def to_dict(self) -> dict[str, str]:
        return {**dataclasses.asdict(self), "uri": self.uri}


def is_model_uri(target: object) -> bool:
    return str(target).startswith(PREFIX)


def parse(uri: str) -> tuple[str, str, str]:
    """models:/NAME/VERSION -> (NAME, VERSION, ""); models:/NAME@ALIAS -> (NAME, "", ALIAS)."""
    m = _URI.match(uri)
    if m is None:
        raise UsageError(f"{uri!r} is not a registered model: give models:/NAME/VERSION or models:/NAME@ALIAS")
    return m["name"], m["version"] or "", m["alias"] or ""


def variant(meta: Metadata) -> str:
    """What kind of export a file is: float32, uint8-input, float16, int8 (combined with +)."""
    e = meta.export
    if e is None:
        return "float32"
    parts = [p for p, on in (("uint8-input", e.input_dtype == "uint8"), ("float16", e.precision == "float16")) if on]
    parts += ["int8"] if e.quantization else []
    return "+".join(parts) or "float32"


# -- resolve -----------------------------------------------------------------------------------
def resolve(uri: str) -> Registered:
    """The registered version `uri` names, as a local file checked by its hash."""
    name, version, alias = parse(uri)
    tracking.check_installed(f"the model {uri}")
    server = tracking.tracking_uri("", f"the model {uri}", flag=False)
    client = tracking.mlflow_client(server, timeout_s=TIMEOUT_S, retries=RETRIES)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception as exc:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST or the network
        text = tracking.first_line(exc)
        if "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower() or "does not exist" in text.lower():
            raise UsageError(f"{uri}: the registry at {server} has no such model version ({text})") from None
        raise tracking.failed(f"resolving {uri}", server, exc) from None
    tags = mv.tags or {}
    sha = tags.get(SHA_TAG, "")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise CheckpointError(
            f"{uri} (version {mv.version}) was not registered by `cnnctl export --register` (it has no {SHA_TAG} tag); "
            "download its ONNX file and give its path instead"
        )
    wanted = {MODEL_FILE: sha, **({manifest.FILE: tags[SPLITS_TAG]} if tags.get(SPLITS_TAG) else {})}
    folder = cache_root() / "registry" / sha
    if not all((folder / f).is_file() and file_sha256(folder / f) == digest for f, digest in wanted.items()):
        _download(client, server, uri, mv, wanted, folder)
    return Registered(name, str(mv.version), alias, str(folder / MODEL_FILE), sha, mv.run_id or "", server)


def _download(client: Any, server: str, uri: str, mv: Any, wanted: dict[str, str], folder: Path) -> None:
    """The version's files, each checked against its registered SHA-256, into the cache."""
    import mlflow.artifacts

    try:
        source = client.get_model_version_download_uri(mv.name, mv.version)
        with tempfile.TemporaryDirectory(prefix="cnnctl-registry-") as tmp:
            for file, sha in wanted.items():
                got = Path(
                    mlflow.artifacts.download_artifacts(artifact_uri=f"{source.rstrip('/')}/{file}", dst_path=tmp)
                )
                digest = file_sha256(got)
                if digest != sha:
                    raise CheckpointError(
                        f"{uri}: the downloaded {file}'s SHA-256 {digest[:12]}... is not the registered {sha[:12]}...; "
                        "the registry's copy was changed or damaged: register the model again"
                    )
                with atomic_path(folder / file) as out:
                    got.replace(out)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow, the artifact store, the network
        raise tracking.failed(f"downloading {uri}", server, exc) from None


# -- register ----------------------------------------------------------------------------------
def register(onnx_path: str, name: str, alias: str, uri_given: str = "") -> dict[str, Any]:
    """Log `onnx_path` (a verified cnnctl export) through MLflow's ONNX flavour into its training
    run (a new run in its data set's experiment when it has none on this server), register it as
    a new version of `name`, and point `alias` at it."""
    tracking.check_installed("--register")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UsageError(f"--register {name!r}: a model name is letters, digits, '_', '.' and '-'")
    if alias and (not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", alias) or alias.lower() == "latest"):
        raise UsageError(f"--alias {alias!r}: an alias starts with a letter (letters, digits, '_', '-'; not 'latest')")
    server = tracking.tracking_uri(uri_given, "--register")
    meta = modelfile.read(onnx_path)
    sha = file_sha256(onnx_path)
    client = tracking.mlflow_client(server, timeout_s=TIMEOUT_S, retries=RETRIES)
    try:
        run_id, linked = _run_for(client, server, meta)
        artifact = f"registered/{name}/{sha[:16]}"
        splits = _log_flavour(client, run_id, onnx_path, meta, artifact)
        _ensure_model(client, name)
        tags = {SHA_TAG: sha, VARIANT_TAG: variant(meta), "cnnctl.model": meta.model}
        tags.update({SPLITS_TAG: splits} if splits else {})
        mv = client.create_model_version(name, source=f"runs:/{run_id}/{artifact}", run_id=run_id, tags=tags)
        mv = _ready(client, mv)
        if alias:
            client.set_registered_model_alias(name, alias, mv.version)
    except CnnctlError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow, the artifact store, the network
        raise tracking.failed(f"--register {name}", server, exc) from None
    return {
        "name": name,
        "version": str(mv.version),
        "alias": alias,
        "uri": f"{PREFIX}{name}/{mv.version}",
        "alias_uri": f"{PREFIX}{name}@{alias}" if alias else "",
        "run_id": run_id,
        "linked_to_training_run": linked,
        "tracking_uri": server,
        "sha256": sha,
        "variant": variant(meta),
    }


def _run_for(client: Any, server: str, meta: Metadata) -> tuple[str, bool]:
    """The training run the file came from, when it was tracked on this server; else a new run."""
    link = meta.tracking or {}
    if link.get("run_id") and link.get("uri") == server:
        try:
            return client.get_run(link["run_id"]).info.run_id, True
        except Exception:  # noqa: BLE001 - deleted, or another server's: log into a new run
            pass
    data = meta.data.name if meta.data is not None else meta.model
    run = client.create_run(
        tracking.experiment_id(client, tracking.experiment_name("", data)),
        run_name=f"export {meta.model}",
        tags={"mlflow.source.name": "cnnctl export"},
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id, False


def _log_flavour(client: Any, run_id: str, onnx_path: str, meta: Metadata, artifact: str) -> str:
    """The file through mlflow.onnx.save_model (MLmodel with a signature, an input example and
    cnnctl's Metadata) with its run's split manifest beside it, then into the run's artifacts;
    returns the manifest's SHA-256 ("" when the file has no run directory around it)."""
    import shutil

    import mlflow.onnx
    import numpy as np
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from cnnctl.runtime.inference import OnnxClassifier

    clf = OnnxClassifier(onnx_path, "cpu")
    c, h, w = meta.input_shape
    example = clf.from_pixels(np.full((1, c, h, w), 128, np.uint8))
    item = list(example.shape[1:])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(example.dtype, (-1, *item), "input")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, meta.num_classes), "logits")]),
    )
    with tempfile.TemporaryDirectory(prefix="cnnctl-register-") as tmp:
        folder = Path(tmp) / "model"
        mlflow.onnx.save_model(
            onnx.load(onnx_path),
            str(folder),
            signature=signature,
            input_example=example,
            metadata={"cnnctl": meta.to_dict()},
            save_as_external_data=False,
        )
        splits = Path(onnx_path).parent / manifest.FILE
        if splits.is_file():
            shutil.copyfile(splits, folder / manifest.FILE)
        client.log_artifacts(run_id, str(folder), artifact)
        return file_sha256(folder / manifest.FILE) if splits.is_file() else ""


def _ensure_model(client: Any, name: str) -> None:
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST: create it (another process may race us)
        try:
            client.create_registered_model(name, tags={"mlflow.source.name": "cnnctl"})
        except Exception:  # noqa: BLE001
            client.get_registered_model(name)


def _ready(client: Any, mv: Any) -> Any:
    """Wait (bounded) until the registry has the version's files (READY)."""
    deadline = time.monotonic() + READY_WAIT_S
    while str(getattr(mv, "status", "READY")) not in ("READY", "ModelVersionStatus.READY"):
        if time.monotonic() > deadline or "FAILED" in str(mv.status):
            raise TrackingError(f"the registry did not make {mv.name} version {mv.version} ready ({mv.status})")
        time.sleep(0.5)
        mv = client.get_model_version(mv.name, mv.version)
    return mv


def local(target: str) -> tuple[str, Registered | None]:
    """A model argument as a local path: a `models:/` URI resolved (and cached), anything else as given."""
    if not is_model_uri(target):
        return target, None
    found = resolve(target)
    return found.path, found
