"""Where a run's weights start, and which of them train: `--init`, `--freeze`, per-group rates.

- `init_from(model, source)` loads every tensor of `source` whose name and shape match the
  model's (a cnnctl run directory or checkpoint, or any safetensors file holding a plain state
  dict, as timm and the Hugging Face hub publish); the others (usually the head, when the number
  of classes differs) keep their fresh initialisation. A source that covers less than half of the
  model's parameters is refused: it is another architecture.
- `Freezer` freezes everything but the head (a linear probe): no gradients, and BatchNorm layers
  in eval mode so their running statistics stay as they were; `unfreeze_at` epoch N releases
  them (probe, then fine-tune). Frozen tensors come out bit-identical.
- `param_groups` gives the head the base learning rate and the rest `backbone_lr_scale` times it
  (and, with `bn_bias_lr_scale`, BatchNorm biases their own multiple, their weights fixed);
  the epoch loop (engine.Stepping) multiplies each group's `lr_scale` into the scheduled rate.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnctl.errors import CheckpointError, UsageError

HEAD_NAMES = ("classifier", "fc", "head", "heads")
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
    if p.suffix in (".pt", ".pth", ".ckpt", ".pkl", ".bin"):
        raise CheckpointError(f"--init {source}: pickled PyTorch files are refused (loading them can run code); convert it to .safetensors")
    if not p.is_file():
        raise CheckpointError(f"--init {source}: no such file or directory")
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"--init {source}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    # last.safetensors-style files keep the weights under model/ beside optimizer and RNG state.
    if any(k.startswith("model/") for k in state):
        state = {k.removeprefix("model/"): v for k, v in state.items() if k.startswith("model/")}
    return state


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


def load_pretrained(model: nn.Module, weights: Pretrained) -> InitReport:
    """Load torchvision's weights from the torch hub cache (downloading them when possible)."""
    if not weights.file.is_file():
        try:
            torch.hub.download_url_to_file(weights.url, str(weights.file), progress=False)
        except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, OSError, timeouts
            weights.file.with_suffix(weights.file.suffix + ".partial").unlink(missing_ok=True)
            raise CheckpointError(
                f"{weights.name} is not in the torch hub cache and could not be downloaded ({type(exc).__name__}); "
                f"fetch {weights.url} and save it as {weights.file} (TORCH_HOME sets the cache folder)"
            ) from None
    try:
        # weights_only: the restricted unpickler that loads tensors and plain containers, no code.
        state = torch.load(str(weights.file), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - damaged or foreign file
        raise CheckpointError(f"{weights.file}: not readable as {weights.name} ({str(exc).splitlines()[0][:200]}); delete it and retry") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights.file}: holds no state dict; delete it and retry")
    return load_matching(model, state, f"--pretrained {weights.name}", weights.name)


def head_of(model: nn.Module) -> tuple[str, nn.Module]:
    """The classifier head: the first of `classifier`, `fc`, `head`, `heads` the model has."""
    for name in HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return name, module
    last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise UsageError("--freeze backbone: this model has no classifier head (no Linear layer) to keep training")
    return last[-1]


def _stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


class Freezer:
    """Freeze all but the head until epoch `unfreeze_at` (0: for the whole run)."""

    def __init__(self, model: nn.Module, mode: str, unfreeze_at: int = 0) -> None:
        self.model, self.mode, self.unfreeze_at = model, mode, unfreeze_at
        self.head_name, head = head_of(model) if mode != "none" else ("", None)
        self.head_params = {id(p) for p in head.parameters()} if head is not None else set()
        self.frozen = False

    def frozen_at(self, epoch: int) -> bool:
        return self.mode == "backbone" and (self.unfreeze_at <= 0 or epoch < self.unfreeze_at)

    def apply(self, epoch: int) -> bool:
        """Set the state for `epoch`; returns True when it changed."""
        want = self.frozen_at(epoch)
        if want == self.frozen:
            return False
        head_modules = {id(m) for m in dict(self.model.named_modules())[self.head_name].modules()} if self.head_name else set()
        for p in self.model.parameters():
            if id(p) not in self.head_params:
                p.requires_grad_(not want)
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_modules:
                if want:
                    m.train = types.MethodType(_stay_eval, m)  # model.train() leaves it in eval mode
                    m.eval()
                else:
                    m.__dict__.pop("train", None)
        self.frozen = want
        return True


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batchnorm_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, biases) of the model's BatchNorm layers."""
    norms = [m for m in batchnorms(model) if m.affine]
    return [m.weight for m in norms], [m.bias for m in norms]


def set_batchnorm_momentum(model: nn.Module, momentum: float) -> int:
    """Give every BatchNorm layer this running-statistics momentum; returns how many there are."""
    norms = batchnorms(model)
    for m in norms:
        m.momentum = momentum
    return len(norms)


@dataclass
class ParamGroup:
    """One optimizer parameter group and its share of the scheduled learning rate and weight decay."""

    name: str
    params: list[nn.Parameter]
    lr_scale: float = 1.0
    wd_scale: float = 1.0


def param_groups(model: nn.Module, freezer: Freezer | None, backbone_lr_scale: float, bn_bias_lr_scale: float = 0.0) -> list[ParamGroup]:
    """Optimizer groups: the head at the base rate, the backbone at `backbone_lr_scale` times it.

    Frozen parameters are in the backbone group too (they get no gradients while frozen, so the
    optimizer leaves them untouched), so unfreezing needs no new optimizer.

    `bn_bias_lr_scale` > 0 is airbench's "scalebias": BatchNorm weights stay as they are (1 in a
    fresh net; left out of the optimizer, no gradients) and BatchNorm biases train at that many
    times their group's rate, with `wd_scale` 1 / that, so that weight decay takes the same share
    of them per step as of every other parameter.
    """
    bn_weights, bn_biases = batchnorm_params(model) if bn_bias_lr_scale else ([], [])
    for w in bn_weights:
        w.requires_grad_(False)
    skip = {id(p) for p in bn_weights + bn_biases}
    if freezer is None and backbone_lr_scale == 1.0:
        groups = [ParamGroup("all", [p for p in model.parameters() if id(p) not in skip])]
    else:
        head = freezer.head_params if freezer is not None else {id(p) for p in head_of(model)[1].parameters()}
        groups = [ParamGroup("head", [p for p in model.parameters() if id(p) in head and id(p) not in skip])]
        rest = [p for p in model.parameters() if id(p) not in head and id(p) not in skip]
        if rest:
            groups.append(ParamGroup("backbone", rest, lr_scale=backbone_lr_scale))
    if bn_biases:
        groups.append(ParamGroup("bn_bias", bn_biases, lr_scale=bn_bias_lr_scale * backbone_lr_scale, wd_scale=1.0 / bn_bias_lr_scale))
    return groups
