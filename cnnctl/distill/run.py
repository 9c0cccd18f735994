"""A distillation run: the student's config framed as its teacher sees photos, the teacher joined
to the trainer through `trainer.Host(student=...)`, every train option kept.

The student is an ordinary run directory (eval, export, serve, calibrate read it); its Metadata
names the teacher, and config.json's "distill" records the settings `--resume` continues with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnctl.config import TrainConfig
from cnnctl.distill.teacher import Teacher, check_agrees, load_teacher
from cnnctl.errors import RunDirError, UsageError
from cnnctl.runtime.preprocess import IMAGE_SUFFIXES, Preprocess

Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """How the student learns from its teacher (docs/distill.md)."""

    teacher: str
    alpha: float = 0.5  # the task loss's share; 1: the labels alone (the teacher is not asked)
    temperature: float = 4.0
    unlabeled: str = ""  # a folder of images only the teacher labels

    def checked(self) -> Settings:
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha {self.alpha:g} must be in [0, 1] (1: the labels alone, 0: the teacher alone)")
        if not 0.0 < self.temperature <= 100.0:
            raise UsageError(f"--temperature {self.temperature:g} must be in (0, 100]; 1 to 8 is usual (default 4)")
        if self.unlabeled and not Path(self.unlabeled).is_dir():
            raise UsageError(f"--unlabeled {self.unlabeled}: not a folder of images")
        if self.unlabeled and self.alpha >= 1.0:
            raise UsageError(
                "--unlabeled images are labelled by the teacher alone, which --alpha 1 never asks; lower --alpha"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher,
            "alpha": self.alpha,
            "temperature": self.temperature,
            "unlabeled": str(Path(self.unlabeled).resolve()) if self.unlabeled else "",
        }


RECIPE_KEYS = ("alpha", "temperature")


def recipe_settings(recipe: str | None) -> dict[str, float]:
    """A recipe's `[distill]` table (alpha, temperature): the defaults flags override."""
    if not recipe:
        return {}
    from cnnctl.config import read_toml
    from cnnctl.recipebook import locate

    path = locate(recipe)
    table = read_toml(path, "recipe", "`cnnctl recipes` lists the shipped ones").get("distill", {})
    if not isinstance(table, dict):
        raise UsageError(f"recipe {path}: [distill] must be a table (alpha = 0.5, temperature = 4.0)")
    out: dict[str, float] = {}
    for key, value in table.items():
        if key not in RECIPE_KEYS:
            raise UsageError(f"recipe {path}: unknown key {key!r} in [distill] (it takes {', '.join(RECIPE_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"recipe {path}: [distill] {key} must be a number, got {value!r}")
        out[key] = float(value)
    return out


def recorded_settings(run_dir: str) -> Settings:
    """A distillation run's settings from its config.json (what `--resume` continues with)."""
    from cnnctl.io import read_json

    saved = read_json(
        Path(run_dir) / "config.json", RunDirError, f"{run_dir} is not a cnnctl run directory (no config.json)"
    )
    rec = saved.get("distill")
    if not isinstance(rec, dict) or "teacher" not in rec:
        raise UsageError(f"{run_dir} was not trained by cnnctl distill; resume it with cnnctl train --resume {run_dir}")
    return Settings(
        str(rec["teacher"]), float(rec["alpha"]), float(rec["temperature"]), str(rec.get("unlabeled") or "")
    )


def framed_like(cfg: TrainConfig, teacher: Preprocess) -> TrainConfig:
    """The student's config with photos framed as the teacher frames them (its centre crop's share
    of the shorter side), so the views converted from the teacher's are what the student's own
    decoding gives in deployment; another framing asked for explicitly is refused."""
    if teacher.resize == "crop":
        share = teacher.size[0] / teacher.resize_size
        if cfg.resize == "stretch":
            raise UsageError(
                f"--resize stretch frames photos otherwise than the teacher (the centre {share:.3f} of the shorter side): "
                f"the student would train on views it never sees in deployment; use --resize crop or leave it out"
            )
        if cfg.resize == "auto":
            return dataclasses.replace(cfg, resize="crop", crop_pct=round(share, 6))
        return cfg
    if cfg.resize == "crop":
        raise UsageError(
            "--resize crop frames photos otherwise than the teacher (it stretches whole images): the student would "
            "train on views it never sees in deployment; use --resize stretch or leave it out"
        )
    return dataclasses.replace(cfg, resize="stretch") if cfg.resize == "auto" else cfg


def refusals(cfg: TrainConfig, settings: Settings) -> None:
    """Train options a distillation cannot take, each in one line."""
    if settings.unlabeled and (cfg.mixup or cfg.cutmix):
        raise UsageError("--unlabeled images have no labels to mix; drop --mixup/--cutmix")
    if settings.unlabeled and cfg.sampler == "balanced":
        raise UsageError("--sampler balanced draws by class, which --unlabeled images do not have; drop one")
    from cnnctl.distill.viewtable import FIXABLE

    changing = cfg.auto_augment != "none" or cfg.mixup or cfg.cutmix or cfg.alternate_flip
    if cfg.feature_views > 1 and (changing or cfg.augment not in FIXABLE) and settings.alpha < 1.0:
        raise UsageError(
            f"--feature-views {cfg.feature_views} fixes crops and flips ({', '.join(FIXABLE[1:])}); RandAugment, "
            f"mixing and --alternate-flip change every epoch: drop --feature-views or those"
        )


def student_parts(settings: Settings, teacher: Teacher, log: Log) -> Any:
    """The trainer's `Student`: the distillation's batches and loss for this teacher."""
    from cnnctl.distill.loss import distillation_loss
    from cnnctl.train.trainer import Student

    def batches(plan: Any, train: Any, dist: Any) -> Any:
        check_agrees(teacher, list(plan.data.classes), plan.multilabel)
        return _batches(plan, train, dist, teacher, settings, log)

    def loss(task: Any, plan: Any) -> Any:
        return distillation_loss(task, settings.alpha, settings.temperature, plan.multilabel)

    return Student(batches, loss, teacher.record(settings.alpha, settings.temperature), settings.to_dict())


def _batches(plan: Any, train: Any, dist: Any, teacher: Teacher, settings: Settings, log: Log) -> Any:
    from cnnctl.data.batches import Augmentation, Batches, Order
    from cnnctl.data.sources import default_cache_dir
    from cnnctl.distill.views import DistillBatches, Store, fixed_views, outputs_key, teacher_outputs
    from cnnctl.distill.viewtable import ViewTable

    split, src = _source(plan, teacher.meta.preprocess, settings.unlabeled, log)
    source = Batches(
        split,
        src,
        train.batch_size,
        order=Order(shuffle=True, seed=plan.cfg.seed, rank=dist.rank, world=dist.world_size, draw=train.draw),
        augmentation=Augmentation(train.augment, train.policy, train.mix, alternate_flip=train.coins is not None),
        device=plan.device,
        channels_last=plan.cfg.channels_last,
    )
    t_prep = teacher.meta.preprocess
    if settings.alpha >= 1.0:
        log("distill: --alpha 1 trains on the labels alone; the teacher is not asked")
        return DistillBatches(source, plan.data.prep, t_prep, None)
    answer = teacher.answerer(plan.device, plan.amp)
    count = max(1, plan.cfg.feature_views)
    why_not = fixed_views(source, count)
    if why_not is not None:
        if count > 1:
            raise UsageError(why_not)
        log(
            f"teacher: answers for each view as it is drawn ({why_not}); --feature-views N fixes N views per image "
            f"and keeps its answers"
        )
        return DistillBatches(source, plan.data.prep, t_prep, answer)
    stored = (int(split.store.shape[-2]), int(split.store.shape[-1]))
    size = (int(src.size[0]), int(src.size[1]))
    table = ViewTable.draw(count, source.augment, plan.cfg.seed, len(split), size, stored)
    key = outputs_key(teacher.sha256, t_prep, source, table, plan.amp)
    fixed = teacher_outputs(answer, t_prep, source, table, key, Store(default_cache_dir(plan.cfg.cache_dir), log))
    return DistillBatches(source, plan.data.prep, t_prep, answer, fixed)


def _source(plan: Any, teacher_prep: Preprocess, unlabeled: str, log: Log) -> tuple[Any, Preprocess]:
    """The images the views are drawn from, and their preprocessing: the student's own training
    images where the student's input is the larger; else the same files decoded as the teacher
    sees them; with the `unlabeled` folder's images after them."""
    from cnnctl.data.cache import load_pixels
    from cnnctl.data.sources import Split, default_cache_dir, redecode
    from cnnctl.distill.views import same_input, source_prep, stored_prep, with_unlabeled

    student_prep, train = plan.data.prep, plan.data.train
    cache = default_cache_dir(plan.cfg.cache_dir)
    src = source_prep(student_prep, teacher_prep)
    if same_input(src, student_prep):
        src, split = student_prep, train
    elif train.paths is None:
        log(
            f"views: {plan.cfg.data} has no image files to decode at {src.size[0]}x{src.size[1]}; the teacher's "
            f"input is converted from the student's {student_prep.size[0]}x{student_prep.size[1]}"
        )
        src, split = student_prep, train
    else:
        split = redecode(train, stored_prep(src), cache, log)
        log(
            f"views: drawn at {src.size[0]}x{src.size[1]} (the teacher's input), shrunk to the student's "
            f"{student_prep.size[0]}x{student_prep.size[1]}: both models see the same view"
        )
    if unlabeled:
        files = sorted(str(p) for p in Path(unlabeled).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise UsageError(f"--unlabeled {unlabeled}: no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...) in it")
        prep = stored_prep(src) if split is not train else _stored_like(train, src)
        pixels = load_pixels(files, prep, cache, log)
        ok = [i for i in range(len(files)) if i not in pixels.failed]
        if pixels.failed:
            log(
                f"--unlabeled: {len(pixels.failed)} file(s) did not decode and are left out: {next(iter(pixels.failed.values()))}"
            )
        import torch

        extra = Split(pixels.array, torch.zeros(len(files)), files).take(torch.tensor(ok, dtype=torch.int64))
        split = with_unlabeled(split, extra)
        log(f"--unlabeled: {len(ok)} image(s) from {unlabeled}, labelled by the teacher alone")
    return split, src


def _stored_like(train: Any, prep: Preprocess) -> Preprocess:
    """The preprocessing the student's own training images are stored in (their stored size)."""
    from cnnctl.distill.views import stored_prep

    stored = stored_prep(prep)
    if tuple(train.store.shape[-2:]) == tuple(stored.size):
        return stored
    return dataclasses.replace(prep, size=(int(train.store.shape[-2]), int(train.store.shape[-1])))


def host_for(settings: Settings, log: Log) -> Callable[[TrainConfig], tuple[TrainConfig, Any]]:
    """What `trainer.train` runs a distillation with: the teacher loaded before any image is
    decoded, the student's config framed like the teacher, and the `Host` carrying the student's
    batches and loss."""
    from cnnctl.train.trainer import Host

    def adapt(cfg: TrainConfig) -> tuple[TrainConfig, Host]:
        teacher = load_teacher(settings.teacher)
        cfg = framed_like(cfg, teacher.meta.preprocess)
        refusals(cfg, settings)
        return cfg, Host(student=student_parts(settings, teacher, log))

    return adapt
