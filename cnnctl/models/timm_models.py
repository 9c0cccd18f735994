"""Any timm model as `timm:NAME` (optional: `pip install 'cnnctl[timm]'`), built for the input
channels and classes through timm's own `create_model(num_classes=, in_chans=)`.

`NAME` may carry a pretrained tag (`timm:tf_efficientnet_lite0.in1k`): the architecture is the
same, the tag picks the weights `--pretrained` loads (weights.py reads timm's pretrained_cfg).
"""

from __future__ import annotations

from typing import Any

from cnnctl.errors import ModelError, UsageError

TIMM_PREFIX = "timm:"


def require_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UsageError("timm:NAME models need timm: pip install 'cnnctl[timm]'") from None
    return timm


def timm_names(pattern: str) -> list[str]:
    """`timm:NAME` for every timm architecture matching the wildcard after the prefix."""
    timm = require_timm()
    return [TIMM_PREFIX + n for n in timm.list_models(pattern[len(TIMM_PREFIX) :] or "*")]


def split_tag(timm_name: str) -> tuple[str, str]:
    """("tf_efficientnet_lite0", "in1k") for "tf_efficientnet_lite0.in1k"; tag "" when none."""
    arch, _, tag = timm_name.partition(".")
    return arch, tag


def build_timm(in_shape: tuple[int, int, int], num_classes: int, *, timm_name: str) -> Any:
    timm = require_timm()
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes, "in_chans": in_shape[0]}
    if timm.models.get_pretrained_cfg_value(split_tag(timm_name)[0], "fixed_input_size"):
        kwargs["img_size"] = tuple(in_shape[1:])  # ViT-style position embeddings are sized for the input
    try:
        return timm.create_model(timm_name, **kwargs)
    except TypeError as exc:  # an architecture without img_size
        raise ModelError(f"timm:{timm_name} cannot be built for {in_shape[1]}x{in_shape[2]} inputs ({exc})") from None


def timm_entry(name: str) -> Any:
    import difflib

    from cnnctl.models.registry import ModelEntry

    timm = require_timm()
    timm_name = name[len(TIMM_PREFIX) :]
    arch, tag = split_tag(timm_name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}? " if close else ""
        raise ModelError(f"unknown timm model {name!r}: {hint}run `cnnctl models 'timm:*PATTERN*'` to list them")
    if tag and timm_name not in timm.list_pretrained(f"{arch}.*"):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        raise ModelError(f"timm has no pretrained tag {tag!r} for {arch}; it has {', '.join(tags) or 'none'}")
    cfg = timm.models.get_pretrained_cfg(timm_name) if tag else timm.models.get_pretrained_cfg(arch)
    size = tuple(cfg.input_size) if cfg is not None and cfg.input_size else (3, 224, 224)
    return ModelEntry(
        name=name,
        factory=build_timm,
        description=f"timm {timm_name}, untrained (--pretrained: timm's weights), input channels and head adapted",
        default_input=(int(size[0]), int(size[1]), int(size[2])),
        num_classes=int(cfg.num_classes) if cfg is not None and cfg.num_classes else 1000,
        source=f"timm.create_model({timm_name!r})",
        kwargs={"timm_name": timm_name},
    )
