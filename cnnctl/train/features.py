"""Cached features of a frozen backbone: the backbone runs once per image view, the head trains
(and validates, and `cnnctl eval` evaluates) on what it stored.

With `--freeze backbone`, every epoch until `--unfreeze-at` pushes the same images through the
same frozen weights again. Here the head's input (what the backbone hands the classifier) is
computed once per image view into a memory-mapped cache entry and the epochs gather batches of
it: the model's output is its head applied to that input, so nothing else changes (checked on a
few images before anything is stored; a model where it is not so trains the usual way).

- Views: view 0 is the un-augmented image (the centre crop evaluation sees); with
  augmentation, views 1..N-1 are augmented copies drawn once (`--feature-views N`). Each epoch
  gives every image one of its views at random (seeded by the epoch, so resume stays exact).
- The key names everything the features depend on, so they cannot go stale: the backbone's
  weights (a hash of every tensor outside the head, BatchNorm statistics included), the
  preprocessing (decode, normalisation), the images (the decode cache's key of the files: path,
  size, mtime, plus the rows and labels taken), the views and the precision they were computed in.
- Storage and locking are the decode cache's (`data.cache.cached_array`): one entry per machine
  shared by every torchrun rank on it, written to a temporary file, fsynced and renamed, so a
  kill during the feature pass leaves nothing that looks complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from cnnctl.data.batches import Augmentation, Batches, Order
from cnnctl.data.bundle import fingerprint
from cnnctl.data.cache import cached_array, hash_files
from cnnctl.data.policies import PolicyAugment
from cnnctl.data.sources import Split
from cnnctl.progress import Meter
from cnnctl.runtime.preprocess import Preprocess
from cnnctl.train.engine import autocast

FORMAT = 1
Log = Callable[[str], None]


@dataclass(frozen=True)
class Views:
    """How many views of each image are stored: view 0 un-augmented, the rest augmented."""

    count: int = 1
    augment: str = "none"  # the augmentation of views 1..count-1
    seed: int = 0
    policy: PolicyAugment | None = None

    def describe(self) -> str:
        if self.count == 1:
            return "1 view per image (un-augmented)"
        extra = f" + {self.policy.name}" if self.policy is not None else ""
        return f"{self.count} views per image (1 un-augmented, {self.count - 1} with {self.augment}{extra})"

    def key(self) -> dict:
        policy = None if self.policy is None else [self.policy.name, self.policy.magnitude, self.policy.group]
        return {
            "count": self.count,
            "augment": self.augment if self.count > 1 else "none",
            "seed": self.seed if self.count > 1 else 0,
            "policy": policy if self.count > 1 else None,
        }


class HeadInput:
    """Records what the head module receives on each forward pass of the model."""

    def __init__(self, head: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = head.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0]

    def close(self) -> None:
        self.handle.remove()


def head_module(model: nn.Module, head_name: str) -> nn.Module:
    return dict(model.named_modules())[head_name]


def is_head_last(model: nn.Module, head: nn.Module, x: torch.Tensor) -> bool:
    """Whether the model's output is its head applied to the head's input (on the images `x`, in
    float32): what makes training the head on stored inputs the same as training the model."""
    was_training = model.training
    model.eval()
    capture = HeadInput(head)
    try:
        with torch.inference_mode():
            out = model(x)
            if capture.value is None or not isinstance(out, torch.Tensor):
                return False
            again = head(capture.value)
        scale = float(out.abs().max())  # relative: an untrained net's logits can all be ~1e-9
        return again.shape == out.shape and float((again - out).abs().max()) <= 1e-4 * scale + 1e-30
    finally:
        capture.close()
        model.train(was_training)


def first_images(split: Split, pixels: Batches, n: int = 4) -> torch.Tensor:
    """The first `n` images of `split` as the model sees them (the checks before a feature pass)."""
    return next(
        iter(
            Batches(
                split.take(torch.arange(min(n, len(split)))),
                pixels.prep,
                n,
                device=pixels.device,
                channels_last=pixels.channels_last,
            )
        )
    )[0]


def backbone_digest(model: nn.Module, head_name: str) -> str:
    """A hash of every tensor of the model outside the head (names, dtypes, shapes, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    prefix = head_name + "."
    for name, t in model.state_dict().items():
        if name.startswith(prefix):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def images_identity(split: Split) -> str:
    """What the images are, however the split is held: for files, each one's path, size and mtime
    (in order) with the size they are stored at (eval-sized, or larger for random crops) and the
    labels; for a built-in set, the data bundle's fingerprint (pixel store identity and rows)."""
    if split.paths is None:
        return fingerprint(split)
    h = hashlib.sha256(f"{tuple(split.store.shape[1:])}\n".encode())
    hash_files(h, split.paths)
    h.update(split.y.numpy().tobytes())
    return h.hexdigest()[:32]


def feature_key(model_name: str, digest: str, prep: Preprocess, split: Split, views: Views, amp: str) -> str:
    spec = {
        "format": FORMAT,
        "model": model_name,
        "backbone": digest,
        "preprocess": prep.to_dict(),
        "images": images_identity(split),
        "views": views.key(),
        "amp": amp,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Backbone:
    """A model whose backbone is frozen: the features are what its head (`head_name`) receives."""

    model: nn.Module
    head_name: str
    model_name: str  # the registry name, part of the cache key


@dataclass(frozen=True)
class Store:
    """Where the features are kept (`cache_dir`, one entry per machine), the precision they are
    computed in, and where progress is said."""

    cache_dir: Path
    amp: str
    log: Log


def features_of(backbone: Backbone, pixels: Batches, views: Views, store: Store, what: str) -> torch.Tensor:
    """The head's input for every view of every image of `pixels.split` (decoded and batched as
    `pixels` says): (views, images, ...) from the cache entry when complete, else computed (by one
    process per machine) and stored."""
    model, head_name, model_name = backbone.model, backbone.head_name, backbone.model_name
    split, prep, batch_size = pixels.split, pixels.prep, pixels.batch_size
    device, channels_last, amp, cache_dir, log = (
        pixels.device,
        pixels.channels_last,
        store.amp,
        store.cache_dir,
        store.log,
    )
    head = head_module(model, head_name)
    digest = backbone_digest(model, head_name)
    key = feature_key(model_name, digest, prep, split, views, amp)
    sample = _head_inputs(model, head, first_images(split, pixels, 2), amp)
    shape = (views.count, len(split), *sample.shape[1:])
    data = cache_dir / f"features-{key}.{str(sample.dtype).removeprefix('torch.')}"
    nbytes = int(torch.Size(shape).numel()) * sample.element_size()

    computed: list[bool] = []

    def fill(out: torch.Tensor, where: str) -> None:
        computed.append(True)
        log(
            f"features: running the frozen backbone once over {len(split)} {what} image(s), {views.describe()}, "
            f"{amp if amp != 'none' else 'float32'}"
            f" -> {nbytes / 2**20:.1f} MiB {where}"
        )
        meter = Meter(
            views.count * len(split),
            "through the frozen backbone",
            verb="computing features",
            done="ran",
            unit="image views",
        )
        done = 0
        for v in range(views.count):
            batches = Batches(
                split,
                prep,
                batch_size,
                device=device,
                channels_last=channels_last,
                order=Order(seed=views.seed),
                augmentation=Augmentation(augment=views.augment if v else "none", policy=views.policy if v else None),
            )
            start = 0
            for x, _ in batches.epoch(v):
                feats = _head_inputs(model, head, x, amp)
                out[v, start : start + len(feats)] = feats.to("cpu", sample.dtype)
                start += len(feats)
                done += len(feats)
                meter.update(done)
        log(meter.summary())

    def compute(tmp: Path) -> dict:
        fill(
            torch.from_file(str(tmp), shared=True, size=int(torch.Size(shape).numel()), dtype=sample.dtype).view(shape),
            f"in {data}",
        )
        return {"views": views.count, "images": len(split), "what": what, "model": model_name}

    try:
        entry = cached_array(data, key, shape, sample.dtype, compute, log, "computing these features", format=FORMAT)
    except OSError as exc:  # no usable cache folder, a full disk: this run keeps them in memory
        log(f"features: cannot use the cache folder {cache_dir} ({exc.strerror or exc}); keeping them in memory")
        out = torch.empty(shape, dtype=sample.dtype)
        fill(out, "in memory")
        return out
    if not computed:
        log(f"features: {what} images from {data.name} ({views.describe()})")
    return entry.array


def _head_inputs(model: nn.Module, head: nn.Module, x: torch.Tensor, amp: str) -> torch.Tensor:
    model.eval()
    capture = HeadInput(head)
    try:
        with torch.inference_mode(), autocast(x.device, amp):
            model(x)
    finally:
        capture.close()
    assert capture.value is not None
    return capture.value.detach()


class FeatureBatches:
    """Batches of stored head inputs in the exact order (and rank slices) the image batches
    `pixels` would give, each image as one of its views drawn per epoch; same interface as Batches."""

    def __init__(self, pixels: Batches, features: torch.Tensor) -> None:
        if features.shape[1] != len(pixels.split):
            raise ValueError(f"{features.shape[1]} stored feature rows for {len(pixels.split)} images")
        self.pixels, self.features = pixels, features
        self.split, self.batch_size = pixels.split, pixels.batch_size

    def __len__(self) -> int:
        return len(self.pixels)

    def sizes(self) -> list[int]:
        return self.pixels.sizes()

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        p = self.pixels
        gen, _ = p.order(epoch)  # the views are drawn after the order, from the same generator
        n, count = len(self.split), self.features.shape[0]
        view = torch.randint(count, (n,), generator=gen) if count > 1 else torch.zeros(n, dtype=torch.int64)
        for rows in p.batch_rows(epoch):
            y = self.split.y[rows]
            x = self.features[view[rows], rows].to(p.device, torch.float32, non_blocking=True)
            yield x, y.to(p.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)


def views_for(augment: str, requested: int, seed: int, policy: PolicyAugment | None) -> Views:
    """`--feature-views` for this run's augmentation (0: auto = 1, the un-augmented view: on the
    cats-vs-dogs photos a linear probe on 4 views, 3 random-resized crops, scored lower than on
    the plain view, docs/results.md)."""
    return Views(requested or 1, augment, seed, policy)


def why_not_cached(*, mixing: bool, ema: bool, feature_cache: str) -> str | None:
    """Why this run's frozen epochs cannot train on stored features (None: they can)."""
    if feature_cache == "off":
        return ""
    if mixing:
        return "--mixup/--cutmix mix pixels, not features"
    if ema:
        return "--ema validates the whole averaged model every epoch"
    return None


def cached_batches(
    backbone: Backbone,
    train: Batches,
    val: Batches | None,
    val_split: Split | None,
    views: Views,
    store: Store,
    *,
    eval_batch: int,
    rank: int,
    world: int,
) -> tuple[FeatureBatches, FeatureBatches | None] | None:
    """Feature batches standing in for `train` and `val` (this rank's shard of `val_split`), or
    None (said in the log) when the model's output is not its head applied to the head's input.
    Validation features are computed in float32, as validation runs."""
    from cnnctl.data.batches import shard_range

    head = head_module(backbone.model, backbone.head_name)
    if not is_head_last(backbone.model, head, first_images(train.split, train)):
        name, head_name = backbone.model_name, backbone.head_name
        store.log(
            f"features: not cached: {name}'s output is not its {head_name} applied to what {head_name} receives; "
            f"every frozen epoch runs the backbone"
        )
        return None

    def pixels(split: Split, prep: Preprocess) -> Batches:
        return Batches(split, prep, eval_batch, device=train.device, channels_last=train.channels_last)

    feats = features_of(backbone, pixels(train.split, train.prep), views, store, "training")
    train_feats = FeatureBatches(train, feats)
    val_feats = None
    if val is not None and val_split is not None:
        stored = features_of(backbone, pixels(val_split, val.prep), Views(), replace(store, amp="none"), "validation")
        lo, hi = shard_range(len(val_split), rank, world)
        val_feats = FeatureBatches(val, stored[:, lo:hi])
    return train_feats, val_feats


def frozen_run(checkpoint: Path, epoch: int | None) -> dict | None:
    """The config of the run that wrote `checkpoint`, when that run's backbone was still frozen at
    the checkpoint's epoch (so its features are worth storing for `cnnctl eval`); else None."""
    try:
        cfg = json.loads((checkpoint.parent / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict) or cfg.get("freeze") != "backbone" or cfg.get("feature_cache", "auto") == "off":
        return None
    unfreeze = int(cfg.get("unfreeze_at") or 0)
    return cfg if not unfreeze or (epoch is not None and epoch < unfreeze) else None


def eval_batches(
    model: nn.Module, model_name: str, split: Split, pixels: Batches, cfg: dict, log: Log
) -> tuple[nn.Module, FeatureBatches] | None:
    """`cnnctl eval` of a frozen-backbone run: (its head, batches of the split's stored features,
    float32), computed on the first evaluation and reused by the next; None where not valid."""
    from cnnctl.data.sources import default_cache_dir
    from cnnctl.train.freezing import head_of

    head_name, head = head_of(model)
    if not len(split) or not is_head_last(model, head, first_images(split, pixels)):
        return None
    store = Store(default_cache_dir(str(cfg.get("cache_dir") or "")), "none", log)
    feats = features_of(Backbone(model, head_name, model_name), pixels, Views(), store, "evaluation")
    return head, FeatureBatches(pixels, feats)
