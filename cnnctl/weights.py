"""Where a run's weights start: `--init` (any cnnctl checkpoint or safetensors state dict) and
`--pretrained`/`--weights` (torchvision's weights API through the torch hub cache).

- `init_from(model, source)` loads every tensor of `source` whose name and shape match the
  model's (a cnnctl run directory or checkpoint, or any safetensors file holding a plain state
  dict, as timm and the Hugging Face hub publish); the others (usually the head, when the number
  of classes differs) keep their fresh initialisation. A source that covers less than half of the
  model's parameters is refused: it is another architecture.
- `pretrained_weights` / `load_pretrained`: torchvision's weights for `tv:NAME` models, loaded
  with `weights_only=True`; their preprocessing becomes the run's.
Which of the weights then train is cnnctl/freezing.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnctl.checkpoint import PICKLE_SUFFIXES, model_tensors
from cnnctl.errors import CheckpointError, UsageError

# Prefixes that wrappers add to state-dict names (DDP, torch.compile, Lightning, some hubs).
PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class InitReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # model tensor -> why it kept its fresh init
    unused: int = 0  # source tensors the model has no place for

    def summary(self) -> str:
        kept = ", ".join(f"{k} ({v})" for k, v in list(self.skipped.items())[:4])
        more = f" and {len(self.skipped) - 4} more" if len(self.skipped) > 4 else ""
        fresh = f"; initialised anew: {kept}{more}" if self.skipped else ""
        return f"--init {self.source}: loaded {len(self.loaded)} of {len(self.loaded) + len(self.skipped)} tensors{fresh}" + (
            f"; {self.unused} tensor(s) of the source unused" if self.unused else "")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": len(self.loaded), "initialised_anew": self.skipped, "unused": self.unused}


def read_state(source: str) -> dict[str, torch.Tensor]:
    """Tensors of a run directory, a cnnctl checkpoint, or a plain safetensors state dict."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(source)
    if p.is_dir():
        if not (p / "model.safetensors").is_file():
            raise CheckpointError(f"--init {source}: no model.safetensors in it; give a cnnctl run directory or a .safetensors file")
        p = p / "model.safetensors"
    if p.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"--init {source}: pickled PyTorch files are refused (loading them can run code); convert it to .safetensors")
    if not p.is_file():
        raise CheckpointError(f"--init {source}: no such file or directory")
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"--init {source}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    return model_tensors(state)


def _strip(name: str) -> str:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def init_from(model: nn.Module, source: str) -> InitReport:
    """Copy the matching tensors of `source` (a file or run directory) into `model`; say what happened."""
    return load_matching(model, read_state(source), f"--init {source}", source)


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> InitReport:
    """Copy the tensors of `state` whose names and shapes match into `model` (in place)."""
    target = model.state_dict()
    by_name = dict(state)
    if not set(by_name) & set(target):  # try without wrapper prefixes
        by_name = {_strip(k): v for k, v in state.items()}
    report = InitReport(source)
    matched: dict[str, torch.Tensor] = {}
    for name, tensor in target.items():
        src = by_name.get(name)
        if src is None:
            report.skipped[name] = "not in the source"
        elif tuple(src.shape) != tuple(tensor.shape):
            report.skipped[name] = f"shape {list(src.shape)} in the source, {list(tensor.shape)} here"
        else:
            matched[name] = src
            report.loaded.append(name)
    report.unused = len(set(by_name) - set(target))
    params = {n for n, _ in model.named_parameters()}
    total = sum(t.numel() for n, t in target.items() if n in params)
    covered = sum(matched[n].numel() for n in matched if n in params)
    if total and covered < 0.5 * total:
        raise CheckpointError(
            f"{what} matches only {covered / total:.0%} of the model's parameters "
            f"({len(report.loaded)} of {len(target)} tensors by name and shape): it is another architecture; "
            f"start from a checkpoint of the same model"
        )
    with torch.no_grad():
        for name, src in matched.items():
            target[name].copy_(src.to(target[name].dtype))
    return report


@dataclass
class Pretrained:
    """torchvision weights for a `tv:NAME` model: where they live, and the preprocessing they expect."""

    name: str  # e.g. ResNet18_Weights.IMAGENET1K_V1
    url: str
    file: Path  # the torch hub cache file ($TORCH_HOME/hub/checkpoints/...)
    mean: list[float]
    std: list[float]
    crop_size: int
    resize_size: int
    interpolation: str


def pretrained_weights(model_name: str, choice: str) -> Pretrained:
    """Look up torchvision's weights enum for `tv:NAME` (`choice`: DEFAULT or a member name)."""
    import os
    from urllib.parse import urlparse

    import torchvision.models as tvm

    if not model_name.startswith("tv:"):
        raise UsageError(f"--pretrained/--weights take torchvision's weights, for tv:NAME models; for {model_name} use --init with a checkpoint")
    tv_name = model_name[3:]
    try:
        enum = tvm.get_model_weights(tv_name)
    except (ValueError, KeyError):
        raise UsageError(f"torchvision publishes no weights for {tv_name}") from None
    members = [m for m in enum.__members__ if m != "DEFAULT"]
    try:
        weights = enum[choice]
    except KeyError:
        raise UsageError(f"--weights {choice!r}: {enum.__name__} has {', '.join(['DEFAULT', *members])}") from None
    transform = weights.transforms()
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return Pretrained(
        name=str(weights), url=weights.url, file=hub / os.path.basename(urlparse(weights.url).path),
        mean=[float(v) for v in transform.mean], std=[float(v) for v in transform.std],
        crop_size=int(transform.crop_size[0]), resize_size=int(transform.resize_size[0]),
        interpolation=str(transform.interpolation.value),
    )  # fmt: skip


def fetch_pretrained(weights: Pretrained) -> Pretrained:
    """Make sure the weights file is in the torch hub cache, downloading it when possible; refuse
    in one line naming the URL and the place for the file otherwise. Called before any image is
    decoded, so a missing file costs nothing."""
    if not weights.file.is_file():
        try:
            torch.hub.download_url_to_file(weights.url, str(weights.file), progress=False)
        except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, OSError, timeouts
            weights.file.with_suffix(weights.file.suffix + ".partial").unlink(missing_ok=True)
            raise CheckpointError(
                f"{weights.name} is not in the torch hub cache and could not be downloaded ({type(exc).__name__}); "
                f"fetch {weights.url} and save it as {weights.file} (TORCH_HOME sets the cache folder)"
            ) from None
    return weights


def load_pretrained(model: nn.Module, weights: Pretrained) -> InitReport:
    """Load torchvision's weights from the torch hub cache (downloading them when possible)."""
    fetch_pretrained(weights)
    try:
        # weights_only: the restricted unpickler that loads tensors and plain containers, no code.
        state = torch.load(str(weights.file), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - damaged or foreign file
        raise CheckpointError(f"{weights.file}: not readable as {weights.name} ({str(exc).splitlines()[0][:200]}); delete it and retry") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights.file}: holds no state dict; delete it and retry")
    return load_matching(model, state, f"--pretrained {weights.name}", weights.name)


