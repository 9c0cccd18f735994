"""Safetensors checkpoints: `model.safetensors` (weights + metadata) and `last.safetensors`
(weights, optimizer state, RNG state and loop state: enough for an exact resume). No pickle.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cnnctl import __version__
from cnnctl.errors import CheckpointError
from cnnctl.io import atomic_path
from cnnctl.runtime import modelfile
from cnnctl.runtime.metadata import Metadata

# Files that hold pickles (torch.save, Hugging Face's pytorch_model.bin): loading one can run code.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")


def model_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's own tensors of a checkpoint's state: last.safetensors keeps them under
    `model/` beside `optim/`, `rng/` and `ema/`; model.safetensors and plain state dicts as they are."""
    if any(k.startswith("model/") for k in state):
        return {k.removeprefix("model/"): v for k, v in state.items() if k.startswith("model/")}
    return state


def versions() -> dict[str, str]:
    return {"cnnctl": __version__, "torch": torch.__version__, "python": platform.python_version()}


def resolve_checkpoint(target: str | Path) -> Path:
    """A run directory -> its model.safetensors; a file -> itself (with clear errors)."""
    p = Path(target)
    if p.is_dir():
        if (p / "model.safetensors").is_file():
            return p / "model.safetensors"
        raise CheckpointError(f"{p} holds no model.safetensors; is it a cnnctl run directory?")
    if p.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{p}: pickled PyTorch files are refused (loading them can run arbitrary code); "
            f"use a cnnctl .safetensors checkpoint"
        )
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    return p


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous, unshared copies: safetensors refuses aliased or strided tensors, and
    # channels_last weights are strided.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model(path: str | Path, model: torch.nn.Module, meta: Metadata) -> None:
    """Write weights plus metadata atomically."""
    with atomic_path(path) as tmp:
        save_file(_state(model), str(tmp), metadata=meta.replace(kind="model").to_json_map())


def build_model(meta: Metadata) -> torch.nn.Module:
    """An untrained model with the architecture that `meta` describes."""
    from cnnctl.models import create

    return create(meta.model, meta.input_shape, meta.num_classes)


def load_model(target: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Metadata, Path]:
    """(model in eval mode, metadata, checkpoint path) from a run directory or .safetensors file."""
    path = resolve_checkpoint(target)
    meta = modelfile.read(path)
    model = build_model(meta)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: cannot read the weights ({str(exc).splitlines()[0]}); the file is damaged"
        ) from None
    state = model_tensors(state)
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match model {meta.model} "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors); the metadata names the wrong model"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit model {meta.model}: {str(exc).splitlines()[-1].strip()}"
        ) from None
    return model.to(device).eval(), meta, path


def save_last(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    meta: Metadata,
    ema: Any = None,
) -> None:
    """Everything to resume: weights, optimizer tensors and hyper-parameters, RNG, loop state,
    and the `--ema` average (an `cnnctl.train.ema.EMA`) when there is one."""
    tensors = {f"model/{k}": v for k, v in _state(model).items()}
    if ema is not None:
        tensors.update({f"ema/{k}": v.contiguous() for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in opt["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    raw = meta.replace(kind="last").to_json_map(
        state=state, optimizer={"param_groups": opt["param_groups"], "scalars": scalars}
    )
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=raw)


def load_last(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: Any = None
) -> dict[str, Any]:
    """Restore model, optimizer, RNG (and the `--ema` average) from `last.safetensors`; returns the loop state."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p} not found: nothing to resume (did the first epoch finish?)")
    _, raw = modelfile.safetensors_header(p)
    try:
        meta = {k: json.loads(v) for k, v in raw.items()}
        tensors = load_file(str(p))
        model.load_state_dict(model_tensors(tensors))
        if ema is not None:
            saved_ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema/")}
            if not saved_ema:
                raise CheckpointError(
                    f"{p} was saved without --ema, so there is no average to resume; drop --ema or start a new run"
                )
            ema.load_state_dict(saved_ema)
        opt_state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, idx, name = key.split("/", 2)
                opt_state.setdefault(int(idx), {})[name] = value
        for idx, extra in meta["optimizer"]["scalars"].items():
            opt_state.setdefault(int(idx), {}).update(extra)
        optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
        torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        return meta["state"]
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"{p} cannot be resumed from ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); the run directory is damaged"
        ) from None


__all__ = [
    "build_model",
    "load_last",
    "load_model",
    "resolve_checkpoint",
    "save_last",
    "save_model",
    "versions",
]


class TorchClassifier:
    """A checkpoint as a `runtime.classifier.Classifier` (meta, prep, from_pixels, logits), in PyTorch."""

    def __init__(self, target: str | Path, device: str = "cpu") -> None:
        self.model, self.meta, path = load_model(target, device)
        self.path, self.provider = str(path), f"torch-{torch.device(device).type}"
        self.prep = self.meta.preprocess
        self.device = torch.device(device)

    @classmethod
    def for_provider(cls, target: str | Path, provider: str = "auto", threads: int = 0) -> TorchClassifier:
        """`predict`'s --provider/--threads for a checkpoint: cpu, cuda or auto (CUDA when
        available) as the torch device, `threads` torch threads (0: torch's default)."""
        from cnnctl.errors import UsageError

        if provider not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--provider must be auto, cpu or cuda, got {provider!r}")
        if provider == "cuda" and not torch.cuda.is_available():
            raise UsageError("--provider cuda: no CUDA device is available to PyTorch here; use --provider cpu or auto")
        if threads:
            torch.set_num_threads(threads)
        return cls(
            target, "cuda" if provider == "cuda" or (provider == "auto" and torch.cuda.is_available()) else "cpu"
        )

    def from_pixels(self, pixels: Any) -> Any:
        from cnnctl.runtime.preprocess import normalize

        return normalize(pixels, self.prep)

    def logits(self, x: Any) -> Any:
        with torch.inference_mode():
            return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()
