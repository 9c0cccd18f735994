"""The one typed definition of every `cnnctl train` option. Torch-free.

Recipes (TOML) and command-line flags both map onto `TrainConfig`: a recipe sets fields, flags
given on the command line override them, and the resolved config is saved as `config.json`.
The train command's flags are generated from these fields, so there is one list, not two.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from cnnctl.errors import UsageError
from cnnctl.machine import parse_batch_size

CHOICES: dict[str, tuple[str, ...]] = {
    "augment": ("none", "flip-crop", "flip-shift", "shift", "flip", "rrc-flip"),
    "optimizer": ("sgd", "adam", "adamw"),
    "loss": ("ce", "mse"),
    "scheduler": ("none", "step", "cosine", "onecycle"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "amp": ("none", "auto", "bf16", "fp16"),
    "monitor": ("auto", "val_acc", "val_loss", "val_map", "last"),
    "task": ("auto", "single", "multilabel"),
    "freeze": ("none", "backbone"),
    "feature_cache": ("auto", "off"),
    "resize": ("auto", "stretch", "crop"),
    "interpolation": ("auto", "bilinear", "bicubic", "nearest"),
    "auto_augment": ("none", "randaugment", "trivialaugment"),
    "log": ("none", "csv", "tensorboard"),
    "track": ("none", "mlflow"),
    "sampler": ("none", "balanced"),
}


def _f(default: Any, help: str, *, cli: bool = True) -> Any:
    """A TrainConfig field: its default, its --help text, and whether it is a flag (`cli`)."""
    return field(default=default, metadata={"help": help, "cli": cli})


@dataclass
class TrainConfig:
    """Every option of a training run, with its default."""

    model: str = _f("", "Model name from the registry (`cnnctl models`).", cli=False)
    data: str = _f(
        "mnist-mini",
        "Data set: mnist, fashion-mnist, kmnist, cifar10, cifar100, mnist-mini (built in), an image folder PATH, or a "
        "label file (.csv, .tsv, .jsonl, .parquet, or a saved Hugging Face dataset folder; docs/labels.md).",
    )
    task: str = _f(
        "auto",
        "single (softmax, one class per image) or multilabel (sigmoid, a set of labels per image, per-class "
        "thresholds tuned on val); auto: multilabel when a label file holds several labels in a row.",
    )
    image_root: str = _f("", "Label files: the folder their image paths are relative to (default: the file's folder).")
    path_column: str = _f(
        "", "Label files: the column of image paths (default: path, file, filename, image, image_name or id)."
    )
    label_column: str = _f("", "Label files: the column of labels (default: labels, label, tags, target or class).")
    label_delim: str = _f("", "Label files: what separates several labels in one cell (default: whitespace).")
    skip_bad_rows: bool = _f(
        False,
        "Label files: leave out rows naming missing or undecodable files, duplicates, empty paths or no label "
        "(counted in the log) instead of refusing the file.",
    )
    data_dir: str = _f("./data", "Where torchvision data sets live (torchvision's layout).")
    download: bool = _f(False, "Download a torchvision data set if it is missing.")
    val_split: float = _f(0.1, "Fraction of the training split held out for validation (model selection), 0 for none.")
    subset: int = _f(
        0,
        "Train on only N training images: a fixed random draw (seeded, the same every run; not stratified, so "
        "class shares vary a little); 0 = all.",
    )
    image_size: str = _f("", "Resize images to N or HxW (image folders; default: the data set's own size).")
    grayscale: bool = _f(False, "Convert images to 1-channel grayscale (image folders).")
    mean: str = _f("", "Per-channel mean, e.g. 0.5,0.5,0.5 (default: computed on the training split).")
    std: str = _f("", "Per-channel std, e.g. 0.25,0.25,0.25 (default: computed on the training split).")
    pretrained: bool = _f(
        False,
        "tv:NAME and timm:NAME models: start from the published DEFAULT weights (torchvision's through the torch hub "
        "cache, TORCH_HOME; timm's through the Hugging Face cache, HF_HOME); their preprocessing becomes the run's.",
    )
    weights: str = _f(
        "",
        "Start from these published weights (implies --pretrained): a torchvision name, e.g. IMAGENET1K_V1, or a timm tag, e.g. in1k.",
    )
    init: str = _f(
        "",
        "Start from the weights of a cnnctl run directory or checkpoint, or a plain state dict (.safetensors, or .pth/.bin "
        "read with torch.load(weights_only=True)): tensors whose names and shapes match are loaded, the rest (usually the "
        "head) start fresh. With --pretrained: the file holding those weights (offline), their preprocessing kept.",
    )
    freeze: str = _f(
        "none", "none, or backbone: train only the head (a linear probe; frozen BatchNorm statistics stay as they are)."
    )
    unfreeze_at: int = _f(
        0, "With --freeze backbone: train the whole network from this epoch on (probe, then fine-tune); 0 = never."
    )
    keep_bn_stats: bool = _f(
        False,
        "With --unfreeze-at: the backbone's BatchNorm layers keep their running statistics (eval mode) while "
        "everything trains (Keras's fine-tuning advice for small data sets).",
    )
    feature_cache: str = _f(
        "auto",
        "With --freeze backbone: auto runs the frozen backbone once per image view and trains the head on the "
        "stored features until --unfreeze-at (memory-mapped in the cache folder); off: every epoch runs it again.",
    )
    feature_views: int = _f(
        0,
        "Views of each training image stored by the feature cache (and, for `cnnctl distill`, answered once by the "
        "teacher): 1 = un-augmented only; N = 1 un-augmented + N-1 augmented (each epoch draws one per image); "
        "0 = auto (1; distill: a new view every epoch, the teacher answering each).",
    )
    backbone_lr_scale: float = _f(
        1.0, "Learning-rate factor for all but the head, e.g. 0.1 when fine-tuning from --init."
    )
    bn_bias_lr_scale: float = _f(
        0.0,
        "Hold BatchNorm weights fixed (at 1 in a fresh net) and train BatchNorm biases at this many times the "
        "learning rate, weight decay per step unchanged (airbench's scalebias: 64); 0 = off.",
    )
    resize: str = _f(
        "auto",
        "Image folders: stretch to --image-size (the tutorials), or crop: keep the aspect ratio, resize the "
        "shorter side to --image-size / --crop-pct and cut out the centre (photos; auto: crop with --pretrained, else stretch).",
    )
    interpolation: str = _f(
        "auto", "Resampling of image folders' photos (auto: the --pretrained weights', else bilinear)."
    )
    crop_pct: float = _f(
        0.875, "With --resize crop: the share of the resized shorter side kept by the centre crop (timm's crop_pct)."
    )
    augment: str = _f(
        "none",
        "Augmentation: none, flip-crop (pad-4 crop + h-flip), flip-shift (pad-2 crop + h-flip, airbench's), "
        "shift (+-2 px, for digits), flip, "
        "rrc-flip (random-resized-crop + h-flip; with --resize crop).",
    )
    alternate_flip: bool = _f(
        False,
        "Flip each training image every other epoch instead of at random (airbench's alternating flip: "
        "a coin per image picks its side in epoch 0). Needs an --augment with flips.",
    )
    allow_flip: bool = _f(
        False, "Allow horizontal flips on digit data sets (refused by default: a flipped 2 is not a 2)."
    )
    auto_augment: str = _f(
        "none",
        "Policy augmentation after --augment: randaugment or trivialaugment (torchvision.transforms.v2 on uint8 batches, "
        "a fresh draw for every group of --aug-group images).",
    )
    aug_magnitude: int = _f(9, "RandAugment magnitude (0-30; torchvision's default 9).")
    aug_group: int = _f(
        8, "Images that share one RandAugment/TrivialAugment draw (1 = every image its own; larger is cheaper)."
    )
    mixup: float = _f(0.0, "MixUp alpha (torchvision.transforms.v2.MixUp on whole batches; e.g. 0.2); 0 = off.")
    cutmix: float = _f(
        0.0, "CutMix alpha (v2.CutMix; e.g. 1.0); 0 = off. With --mixup too, each mixed batch picks one of the two."
    )
    mix_prob: float = _f(1.0, "Share of batches that --mixup/--cutmix mix (the rest train on plain labels).")
    epochs: int = _f(10, "Number of epochs (ignored when --iters is set).")
    iters: int = _f(0, "Train for this many iterations (batches) instead of --epochs.")
    batch_size: int = _f(
        128, "Batch size per optimizer step; under torchrun the global batch, split evenly over the processes."
    )
    eval_batch_size: str = _f(
        "auto",
        "Batch size for validation and test passes: a number, or auto, the largest batch whose forward pass "
        "fits a memory budget (512 MiB of activations on a CPU; estimated from the model's shape trace; at most 1024).",
    )
    optimizer: str = _f("adamw", "Optimizer: sgd, adam, adamw.")
    lr: float = _f(1e-3, "Learning rate (the peak rate for onecycle).")
    momentum: float = _f(0.9, "SGD momentum.")
    nesterov: bool = _f(False, "Nesterov momentum (SGD).")
    weight_decay: float = _f(0.0, "Weight decay.")
    loss: str = _f("ce", "Loss: ce (cross-entropy) or mse (softmax vs one-hot, as the cats-vs-dogs tutorial).")
    label_smoothing: float = _f(0.0, "Label smoothing for cross-entropy.")
    class_weights: str = _f(
        "none",
        "Weigh the loss per class for imbalanced data: none, auto (inverse frequency: N / (K * n_class)), "
        'effective (the effective number of samples, beta 0.999; Cui et al. 2019), or a JSON file {"class": weight}.',
    )
    sampler: str = _f(
        "none",
        "Which images an epoch draws: none (each once, shuffled) or balanced (with replacement, every class "
        "equally likely; the same number of images per epoch).",
    )
    clip_grad: float = _f(0.0, "Clip the gradients' global L2 norm to this value before each step; 0 = off.")
    accumulate: int = _f(
        1,
        "Accumulate gradients over N batches of --batch-size per optimizer step (an effective batch of N x --batch-size).",
    )
    ema: float = _f(
        0.0,
        "Keep an exponential moving average of the weights with this decay per step (e.g. 0.999); it is validated "
        "every epoch and model.safetensors holds the better of the two. 0 = off.",
    )
    lookahead: int = _f(
        0,
        "airbench's lookahead: every N optimizer steps the weights are pulled back towards slow weights that "
        "follow them, harder as training ends (decay 0.95^N x progress^3); e.g. 5. 0 = off.",
    )
    bn_momentum: float = _f(
        0.0,
        "Momentum of every BatchNorm layer's running statistics (PyTorch's convention: the weight of the new batch; "
        "airbench uses 0.4); 0 = the model's own (usually 0.1).",
    )
    scheduler: str = _f("none", "LR schedule: none, step, cosine, onecycle.")
    warmup: float = _f(0.0, "Linear warm-up length in epochs (onecycle default: 30% of training).")
    step_size: int = _f(5, "Epochs between LR drops (step schedule).")
    gamma: float = _f(0.1, "LR factor at each drop (step schedule).")
    seed: int = _f(0, "Random seed (weights, shuffling, augmentation, dropout).")
    device: str = _f("auto", "Device: auto, cpu, cuda, mps.")
    amp: str = _f(
        "none",
        "Mixed precision: auto (bf16 where it is native: a CPU with avx512_bf16/AMX, ~2x faster convolutions, or a CUDA GPU "
        "of compute capability 8.0+; fp16 on older GPUs; else float32), bf16, fp16 (CUDA), none (float32; the default). "
        "bf16 on a CPU that would only emulate it is refused.",
    )
    compile: bool = _f(False, "torch.compile the model (any device; pays off mostly on CUDA).")
    deterministic: bool = _f(False, "Use deterministic algorithms (torch.use_deterministic_algorithms, any device).")
    channels_last: bool = _f(True, "Use channels_last memory format.")
    threads: int = _f(0, "CPU threads for torch (0 = all cores).")
    patience: int = _f(0, "Stop after this many epochs without improvement of --monitor (0 = never).")
    monitor: str = _f(
        "auto",
        "What picks the saved checkpoint: val_acc, val_loss, val_map (multi-label), or last (the last epoch's "
        "weights, for schedules that anneal to zero; with --ema, val_loss picks between the two); auto: val_map for "
        "multi-label runs, else val_acc.",
    )
    threshold_rule: str = _f(
        "f1",
        "Multi-label: how each class's threshold is tuned on the validation split: f1 (the maximum F1), "
        "precision=0.9 (the lowest threshold reaching that precision), recall=0.9, or fixed=0.5.",
    )
    time_limit: float = _f(0.0, "Stop training after this many seconds (0 = no limit).")
    cache_dir: str = _f("", "Cache for decoded image folders (default: ~/.cache/cnnctl).")
    log: str = _f(
        "none",
        "Also write the history where other tools read it: csv (history.csv + steps.csv) or tensorboard "
        "(RUN/tensorboard; needs pip install 'cnnctl[tensorboard]').",
    )
    track: str = _f(
        "none",
        "Also record the run in an experiment tracker: mlflow (the config as params, every epoch's metrics, the run's "
        "files; needs pip install 'cnnctl[mlflow]'; a slow or lost server never stops training; docs/track.md).",
    )
    tracking_uri: str = _f(
        "",
        "--track mlflow: the tracking server (http://HOST:5000, or sqlite:///mlflow.db); default: $MLFLOW_TRACKING_URI.",
    )
    experiment: str = _f("", "--track mlflow: the experiment's name (default: the data set's name).")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def flip(self) -> bool:
        return self.augment in ("flip-crop", "flip-shift", "flip", "rrc-flip")

    def data_config(self) -> DataConfig:
        """What the data layer needs of this run: which images, split how, decoded how. Every
        "auto" must be resolved first (train/plan.py does it, once)."""
        if self.resize == "auto" or self.interpolation == "auto":
            raise ValueError(
                "resize and interpolation must be resolved before the data is read (train.plan.resolve_preprocessing)"
            )
        return DataConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)})


@dataclass(frozen=True)
class DataConfig:
    """The data options of a run (a subset of TrainConfig's, resolved): what `data.build` reads."""

    data: str
    data_dir: str
    download: bool
    val_split: float
    subset: int
    image_size: str
    grayscale: bool
    mean: str
    std: str
    resize: str  # stretch or crop
    interpolation: str  # bilinear, bicubic or nearest
    crop_pct: float
    cache_dir: str
    task: str = "auto"
    image_root: str = ""
    path_column: str = ""
    label_column: str = ""
    label_delim: str = ""
    skip_bad_rows: bool = False


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

# Where each option shows in `cnnctl train --help`, in this order; every CLI field has one panel.
PANELS: dict[str, tuple[str, ...]] = {
    "Data": (
        "data",
        "task",
        "image_root",
        "path_column",
        "label_column",
        "label_delim",
        "skip_bad_rows",
        "data_dir",
        "download",
        "val_split",
        "subset",
        "image_size",
        "resize",
        "crop_pct",
        "interpolation",
        "grayscale",
        "mean",
        "std",
        "cache_dir",
    ),
    "Model & start": (
        "pretrained",
        "weights",
        "init",
        "freeze",
        "unfreeze_at",
        "keep_bn_stats",
        "feature_cache",
        "feature_views",
        "backbone_lr_scale",
    ),
    "Optimisation": (
        "epochs",
        "iters",
        "batch_size",
        "eval_batch_size",
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "weight_decay",
        "bn_bias_lr_scale",
        "bn_momentum",
        "loss",
        "label_smoothing",
        "class_weights",
        "sampler",
        "clip_grad",
        "accumulate",
        "ema",
        "lookahead",
    ),
    "Schedule & stopping": (
        "scheduler",
        "warmup",
        "step_size",
        "gamma",
        "patience",
        "monitor",
        "threshold_rule",
        "time_limit",
    ),
    "Augmentation": (
        "augment",
        "alternate_flip",
        "allow_flip",
        "auto_augment",
        "aug_magnitude",
        "aug_group",
        "mixup",
        "cutmix",
        "mix_prob",
    ),
    "Run & output": ("seed", "log", "track", "tracking_uri", "experiment"),
    "Hardware": ("device", "amp", "compile", "deterministic", "channels_last", "threads"),
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


def coerce(name: str, value: Any, where: str) -> Any:
    """A value from TOML or the command line as the option's type (ints widen to floats; sizes and
    mean/std lists become their strings), or one line saying what `where` gave instead."""
    f = FIELDS[name]
    want = type(f.default)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (
        want is str
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and name in ("image_size", "eval_batch_size")
    ):
        value = str(value)
    if want is str and isinstance(value, list) and name in ("mean", "std"):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise UsageError(f"{where}: {name} must be {want.__name__}, got {value!r}")
    return value


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check choices and ranges; every problem is one line naming the fix."""
    for name, choices in CHOICES.items():
        value = getattr(cfg, name)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(choices)}{hint}")
    if cfg.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.class_weights not in ("none", "auto", "effective") and not cfg.class_weights.endswith(".json"):
        raise UsageError(
            f"--class-weights must be none, auto, effective or a .json file of {{class: weight}}, got {cfg.class_weights!r}"
        )
    if cfg.class_weights != "none" and cfg.loss == "mse":
        raise UsageError("--class-weights weighs cross-entropy; use it with --loss ce")
    parse_batch_size(cfg.eval_batch_size, "--eval-batch-size")
    if cfg.epochs < 1 and cfg.iters < 1:
        raise UsageError("--epochs must be at least 1 (or give --iters)")
    if cfg.iters < 0 or cfg.subset < 0 or cfg.patience < 0 or cfg.threads < 0 or cfg.time_limit < 0:
        raise UsageError("--iters, --subset, --patience, --threads and --time-limit cannot be negative")
    if not 0.0 <= cfg.val_split < 1.0:
        raise UsageError(f"--val-split must be in [0, 1), got {cfg.val_split}")
    if not 0 < cfg.lr < float("inf"):
        raise UsageError(f"--lr must be a positive number (e.g. 1e-3), got {cfg.lr}")
    if cfg.weight_decay < 0 or not 0 <= cfg.label_smoothing < 1 or cfg.momentum < 0 or cfg.warmup < 0:
        raise UsageError("--weight-decay, --momentum and --warmup must be >= 0 and --label-smoothing in [0, 1)")
    if not 0.1 <= cfg.crop_pct <= 1.0:
        raise UsageError(f"--crop-pct must be in [0.1, 1], got {cfg.crop_pct}")
    if cfg.alternate_flip and not cfg.flip:
        raise UsageError(
            f"--alternate-flip needs an --augment with flips (flip-shift, flip-crop, flip, rrc-flip), not {cfg.augment}"
        )
    if cfg.augment == "rrc-flip" and cfg.resize == "stretch":
        raise UsageError(
            "--augment rrc-flip crops from images stored larger than the model's input: use it with --resize crop"
        )
    if cfg.unfreeze_at < 0 or cfg.backbone_lr_scale < 0 or cfg.bn_bias_lr_scale < 0:
        raise UsageError("--unfreeze-at, --backbone-lr-scale and --bn-bias-lr-scale cannot be negative")
    if cfg.track == "none" and (cfg.tracking_uri or cfg.experiment):
        raise UsageError("--tracking-uri and --experiment go with --track mlflow")
    if re.match(r"^[a-z+]+://[^/@]*:[^/@]*@", cfg.tracking_uri):
        raise UsageError(
            "--tracking-uri holds a password, which config.json would keep: give it in MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
        )
    if cfg.feature_views < 0:
        raise UsageError("--feature-views cannot be negative (0 = auto)")
    if cfg.keep_bn_stats and not cfg.unfreeze_at:
        raise UsageError("--keep-bn-stats is for --unfreeze-at (a frozen backbone keeps its statistics anyway)")
    if cfg.unfreeze_at and cfg.freeze == "none":
        raise UsageError("--unfreeze-at needs --freeze backbone (it says when the frozen backbone starts training)")
    if cfg.clip_grad < 0 or cfg.mixup < 0 or cfg.cutmix < 0:
        raise UsageError("--clip-grad, --mixup and --cutmix cannot be negative (0 turns them off)")
    if cfg.accumulate < 1 or cfg.aug_group < 1:
        raise UsageError("--accumulate and --aug-group must be at least 1")
    if cfg.lookahead < 0 or not 0 <= cfg.bn_momentum <= 1:
        raise UsageError(
            "--lookahead cannot be negative (0 = off) and --bn-momentum must be in [0, 1] (0 = the model's own)"
        )
    if not 0 <= cfg.ema < 1:
        raise UsageError(f"--ema is a decay per step in [0, 1), e.g. 0.999 (0 = off); got {cfg.ema}")
    if not 0 <= cfg.mix_prob <= 1:
        raise UsageError(f"--mix-prob must be in [0, 1], got {cfg.mix_prob}")
    if not 0 <= cfg.aug_magnitude <= 30:
        raise UsageError(f"--aug-magnitude must be in [0, 30], got {cfg.aug_magnitude}")
    if cfg.monitor == "last" and cfg.patience:
        raise UsageError(
            "--patience needs --monitor val_acc or val_loss to count epochs without improvement (with last, every epoch is kept)"
        )
    parse_threshold_rule(cfg.threshold_rule)
    if cfg.task == "multilabel" and cfg.loss == "mse":
        raise UsageError(
            "--loss mse is for single-label softmax outputs; multi-label runs train with binary cross-entropy"
        )
    if cfg.loss == "mse" and cfg.label_smoothing:
        raise UsageError("--label-smoothing applies to --loss ce only")
    for name in ("mean", "std"):
        parse_floats(getattr(cfg, name), name)
    return cfg


def parse_threshold_rule(rule: str) -> tuple[str, float]:
    """ "f1" -> ("f1", 0); "precision=0.9" -> ("precision", 0.9); also recall=X and fixed=X."""
    kind, _, value = rule.partition("=")
    try:
        number = float(value) if value else 0.0
    except ValueError:
        number = -1.0
    if (kind == "f1" and not value) or (kind in ("precision", "recall", "fixed") and 0 < number < 1):
        return kind, number
    raise UsageError(
        f"--threshold-rule {rule!r}: use f1, precision=X, recall=X or fixed=X with X in (0, 1), e.g. precision=0.9"
    )


def parse_floats(text: str, name: str) -> list[float]:
    """ "0.5,0.5,0.5" -> [0.5, 0.5, 0.5] ("" -> [])."""
    if not text.strip():
        return []
    try:
        values = [float(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        raise UsageError(f"--{name} must be comma-separated numbers, e.g. 0.5,0.5,0.5; got {text!r}") from None
    if name == "std" and any(v <= 0 for v in values):
        raise UsageError(f"--std values must be positive, got {text!r}")
    return values


def read_toml(path: Path, what: str, where_to_look: str) -> dict[str, Any]:
    """A TOML file (a recipe, a search space) as a dict; a missing, unreadable or invalid file is
    one line naming it (`what` it is, and `where_to_look` when it is missing)."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{what} {path} not found; {where_to_look}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{what} {path} is not valid TOML: {exc}") from None


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a TOML recipe (a shipped name or a file) into {field: value}; unknown keys and wrong types are errors."""
    from cnnctl.recipebook import locate

    p = locate(str(path))
    raw = read_toml(p, "recipe", "`cnnctl recipes` lists the shipped ones (--recipe NAME)")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in ("tune", "distill") and isinstance(value, dict):
            continue  # [tune.space]: what `cnnctl tune` searches; [distill]: `cnnctl distill`'s alpha, temperature
        if name not in FIELDS:
            close = difflib.get_close_matches(name, list(FIELDS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"recipe {p}: unknown key {key!r}{hint}")
        values[name] = coerce(name, value, f"recipe {p}")
    return values


def resolve(
    model: str | None, recipe: str | None, flags: dict[str, Any], base: dict[str, Any] | None = None
) -> TrainConfig:
    """defaults <- base (a resumed run's config) <- recipe <- flags given on the command line."""
    # A resumed run's config.json may predate a field's current type (eval_batch_size was an int).
    values: dict[str, Any] = {
        k: coerce(k, v, "the resumed run's config.json") for k, v in (base or {}).items() if k in FIELDS
    }
    if recipe:
        values.update(load_recipe(recipe))
    values.update({k: coerce(k, v, "command line") for k, v in flags.items() if v is not None})
    if model:
        values["model"] = model
    if not values.get("model"):
        raise UsageError('no model given: `cnnctl train MODEL ...` or a recipe with model = "..."')
    known = {k: v for k, v in values.items() if k in FIELDS}
    return validate(TrainConfig(**known))
