"""The plan of a run: every "auto" resolved once, before the model is built.

`make_plan` takes the config as given (recipe <- flags) and decides, in this order, each stage
failing before the slower ones after it: the device and the machine's choices (precision, threads,
memory layout), the start weights (found before any image is decoded), the preprocessing they
imply (normalisation, crop, crop size, interpolation: `resolve_preprocessing`), the data (split
once, or as a resumed run recorded it), and the inference batch that fits the memory budget. What
it returns is final: nothing below it resolves an "auto" again, and every tool that trains (train,
lr-find, dry run, check --labels) starts from one.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

from cnnctl import machine
from cnnctl.config import DataConfig, TrainConfig
from cnnctl.data.bundle import DataBundle, build
from cnnctl.data.layout import DIGIT_SETS, NAMED_SETS
from cnnctl.data.manifest import Manifest
from cnnctl.errors import UsageError
from cnnctl.models import get_entry
from cnnctl.train.distributed import Dist
from cnnctl.train.engine import Reporter
from cnnctl.train.runlog import check_available
from cnnctl.train.weights import Pretrained, pretrained_weights


@dataclass(frozen=True)
class Plan:
    """A run, fully resolved: the config (preprocessing filled in), where it runs and how, the start
    weights, the data, and the inference batch for validation and test."""

    cfg: TrainConfig
    device: torch.device
    hardware: machine.HardwarePlan
    eval_batch: machine.EvalBatch
    weights: Pretrained | None
    data: DataBundle

    @property
    def amp(self) -> str:
        """The precision training runs at ("none", "bf16" or "fp16"): `--amp` as this machine resolved it.
        Validation and test run in float32, as `cnnctl eval` does, whatever this is."""
        return self.hardware.amp.amp

    @property
    def multilabel(self) -> bool:
        """Whether the run learns label sets (sigmoid outputs, binary cross-entropy): `--task`, or a
        label file with several labels in a row."""
        return self.data.multilabel

    @property
    def monitor(self) -> str:
        """What picks the saved checkpoint: `--monitor`, auto as val_map (multi-label) or val_acc."""
        if self.cfg.monitor != "auto":
            return self.cfg.monitor
        return "val_map" if self.multilabel else "val_acc"

    def hardware_dict(self) -> dict[str, Any]:
        """config.json's "hardware" (and --dry-run's): the machine's choices and the eval batch."""
        return {
            **self.hardware.to_dict(),
            "eval_batch_size": self.eval_batch.size,
            "eval_batch_reason": self.eval_batch.reason,
        }

    def summary(self) -> str:
        return f"{self.hardware.summary()}; eval batch {self.eval_batch.size} ({self.eval_batch.reason})"

    def with_data(self, data: DataBundle) -> Plan:
        """The same plan on other images of the same data (`check --labels` folds)."""
        return dataclasses.replace(self, data=data)


def pick_device(name: str, dist: Dist | None = None) -> torch.device:
    """--device as a torch device; under torchrun each rank takes its own CUDA device."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if dist is not None and dist.enabled and (name == "cuda" or (name == "auto" and torch.cuda.is_available())):
        if dist.local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {dist.local_rank} but this node has {torch.cuda.device_count()} CUDA device(s); lower --nproc-per-node"
            )
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    if dist is not None and dist.enabled and name == "auto":
        return torch.device("cpu")  # DDP runs on CUDA (NCCL) or CPU (Gloo), not MPS
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: MPS is not available here; use --device cpu or auto")
    return torch.device(name)


def make_plan(
    cfg: TrainConfig,
    reporter: Reporter,
    device: torch.device,
    dist: Dist | None = None,
    *,
    recorded: Manifest | None = None,
    accept_data_change: bool = False,
    bundles: dict[DataConfig, DataBundle] | None = None,
) -> Plan:
    """Resolve `cfg` on this machine and its data (see the module docstring). `recorded`: a resumed
    run's split manifest (a changed data folder is refused unless `accept_data_change`). `bundles`:
    the data a search's trials share, by DataConfig (built here the first time a trial needs it)."""
    dist = dist or Dist()
    hardware = _machine(cfg, device, dist)
    get_entry(cfg.model)  # an unknown model, or timm not installed: refused before anything is read
    weights = start_weights(cfg)
    cfg = resolve_preprocessing(cfg, weights)
    if cfg.flip and cfg.data in DIGIT_SETS and not cfg.allow_flip:
        raise UsageError(
            f"--augment {cfg.augment} flips images horizontally, which turns digits into other shapes; "
            f"use --augment shift for {cfg.data}, or add --allow-flip if you really mean it"
        )
    data = _data(cfg.data_config(), reporter, recorded, accept_data_change, bundles)
    _check_task(cfg, data)
    eval_batch = machine.eval_batch(cfg.eval_batch_size, cfg.model, data.input_shape, len(data.classes), device.type)
    plan = Plan(cfg, device, hardware, eval_batch, weights, data)
    reporter.log(plan.summary())
    return plan


def _data(
    key: DataConfig,
    reporter: Reporter,
    recorded: Manifest | None,
    accept_data_change: bool,
    bundles: dict[DataConfig, DataBundle] | None,
) -> DataBundle:
    """The run's data: built (and its notes said), or the bundle an earlier trial of a search built
    from the same DataConfig (a resumed run always reads its recorded splits)."""
    data = bundles.get(key) if bundles is not None and recorded is None else None
    if data is not None:
        return data
    data = build(key, reporter.log, recorded, accept_data_change)
    for note in data.notes:
        reporter.log(note)
    if bundles is not None and recorded is None:
        bundles[key] = data
    return data


def _check_task(cfg: TrainConfig, data: DataBundle) -> None:
    """Options that the data's task rules out, refused once the task is known."""
    if data.multilabel:
        if cfg.loss == "mse":
            raise UsageError(
                "--loss mse is for single-label softmax outputs; multi-label runs train with binary cross-entropy"
            )
        if cfg.sampler == "balanced":
            raise UsageError(
                "--sampler balanced draws by class, which a multi-label image does not have; use --class-weights"
            )
    elif cfg.monitor == "val_map":
        raise UsageError("--monitor val_map is the multi-label mean average precision; use val_acc or val_loss here")


def _machine(cfg: TrainConfig, device: torch.device, dist: Dist) -> machine.HardwarePlan:
    """The machine's choices (amp, threads, layout), applied to torch; refuses what this machine
    cannot run before any image is decoded."""
    hardware = machine.plan(
        cfg.amp,
        cfg.threads,
        cfg.channels_last,
        device.type,
        device_index=device.index or 0,
        local_world_size=dist.local_world_size,
    )
    check_available(cfg.log)
    if cfg.track != "none":
        from cnnctl.track.client import check_installed, tracking_uri

        check_installed("--track mlflow")
        tracking_uri(cfg.tracking_uri)
    torch.set_num_threads(hardware.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return hardware


def start_weights(cfg: TrainConfig) -> Pretrained | None:
    """The --pretrained/--weights checkpoint the run starts from, found (or downloaded) before any
    image is decoded; which weights DEFAULT resolved to is in the log line that loads them."""
    if not (cfg.pretrained or cfg.weights):
        return None
    from cnnctl.train.weights import fetch_pretrained

    # --pretrained --init FILE: FILE holds the weights (offline), the preprocessing is still theirs.
    return fetch_pretrained(pretrained_weights(cfg.model, cfg.weights or "DEFAULT", file=cfg.init))


def resolve_preprocessing(cfg: TrainConfig, weights: Pretrained | None) -> TrainConfig:
    """The config with its preprocessing decided: pretrained weights' normalisation, crop and crop
    size wherever the flags leave them open; resize and interpolation never "auto" afterwards."""
    if weights is not None:
        if not cfg.mean and not cfg.std:
            mean, std = weights.mean, weights.std
            if cfg.grayscale:
                mean, std = [sum(mean) / 3], [sum(std) / 3]
            cfg = dataclasses.replace(cfg, mean=",".join(map(str, mean)), std=",".join(map(str, std)))
        if cfg.resize == "auto" and cfg.data not in NAMED_SETS:
            cfg = dataclasses.replace(
                cfg,
                resize="crop",
                crop_pct=weights.crop_size / weights.resize_size,
                image_size=cfg.image_size or str(weights.crop_size),
            )
        elif cfg.resize == "crop" and not cfg.image_size:
            cfg = dataclasses.replace(cfg, image_size=str(weights.crop_size))  # --resize crop: the weights' crop size
        if cfg.interpolation == "auto":
            cfg = dataclasses.replace(cfg, interpolation=weights.interpolation)
    if cfg.resize == "auto":
        cfg = dataclasses.replace(cfg, resize="stretch")
    return dataclasses.replace(cfg, interpolation="bilinear") if cfg.interpolation == "auto" else cfg
