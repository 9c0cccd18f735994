"""Image embeddings from a frozen ImageNet backbone, for `cnnctl check`: near-duplicate pairs
confirmed by what the pictures show (`check --model tv:NAME --pretrained`), and the features the
label-issue probe fits its logistic regressions on. Imports torch (only when asked for)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnctl.train.engine import EvalResult

Log = Callable[[str], None]


def headless(model: nn.Module) -> nn.Module:
    """`model` with its classifier head replaced by the identity: its output is the pooled features."""
    from cnnctl.train.freezing import head_of

    name, _ = head_of(model)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    return model


def features(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> EvalResult:
    """A headless model's outputs (its pooled features, as `logits`) over `batches`, through the one
    `evaluate()`; the labels are set aside (features are not scored against them)."""
    from cnnctl.train.engine import evaluate

    unlabelled = ((x, torch.zeros(len(x), dtype=torch.int64, device=x.device)) for x, _ in batches)
    return evaluate(model, unlabelled, lambda out, y: out.new_zeros(()))


def embeddings(paths: list[str], model_name: str, weights: str, init: str, cache_dir: Path, log: Log) -> np.ndarray:
    """L2-normalised features (N x D, float32) of the image files, from `model_name`'s published
    weights (`weights`: a torchvision name or timm tag, DEFAULT; `init`: a file holding them),
    each file decoded as those weights were trained (shorter side, centre crop, their mean/std)."""
    from cnnctl.data.batches import Batches
    from cnnctl.data.sources import files_split
    from cnnctl.models import create
    from cnnctl.runtime.preprocess import Preprocess
    from cnnctl.train.weights import fetch_pretrained, load_pretrained, pretrained_weights

    pre = fetch_pretrained(pretrained_weights(model_name, weights or "DEFAULT", file=init))
    crop = pre.crop_size
    prep = Preprocess(
        channels=3,
        size=(crop, crop),
        interpolation=pre.interpolation,
        resize="crop",
        resize_size=pre.resize_size,
        mean=pre.mean,
        std=pre.std,
    )
    net = create(model_name, (3, crop, crop), 2)
    load_pretrained(net, pre)
    net = headless(net).eval().to(memory_format=torch.channels_last)
    split = files_split(paths, np.zeros(len(paths), dtype=np.int64), prep, cache_dir, log, "the duplicate candidates")
    if split.skipped:
        raise ValueError(f"{len(split.skipped)} candidate file(s) stopped decoding during the check")
    result = features(net, Batches(split, prep, 32))
    feats = result.logits.numpy().astype(np.float32)
    log(
        f"embeddings: {feats.shape[1]} features per image from {model_name}'s frozen backbone ({pre.name}), {len(feats)} images"
    )
    out: np.ndarray = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return out
