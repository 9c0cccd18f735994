"""Any torchvision classification model as `tv:NAME`, adapted to the input channels and classes."""

from __future__ import annotations

from torch import nn

from cnnctl.errors import ModelError
from cnnctl.models.registry import TORCHVISION_PREFIX, ModelEntry


def _replace_first_conv(model: nn.Module, channels: int) -> None:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != channels:
                    setattr(
                        parent,
                        child_name,
                        nn.Conv2d(
                            channels,
                            child.out_channels,
                            child.kernel_size,  # type: ignore[arg-type]  # (h, w): torch types it tuple[int, ...]
                            stride=child.stride,  # type: ignore[arg-type]
                            padding=child.padding,  # type: ignore[arg-type]
                            dilation=child.dilation,  # type: ignore[arg-type]
                            groups=1 if child.groups == child.in_channels == 1 else child.groups,
                            bias=child.bias is not None,
                        ),
                    )
                return
            if any(isinstance(m, nn.Conv2d) for m in child.modules()):
                break  # descend into this child first: it holds the first conv
    raise ModelError("this torchvision model has no Conv2d to adapt to the input channels")


def build_torchvision(in_shape, num_classes, *, tv_name: str) -> nn.Module:
    import torchvision.models as tvm

    kwargs: dict = {"weights": None, "num_classes": num_classes}
    if tv_name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    model = tvm.get_model(tv_name, **kwargs)
    if in_shape[0] != 3:
        _replace_first_conv(model, in_shape[0])
    return model


def torchvision_entry(name: str) -> ModelEntry:
    import difflib

    import torchvision.models as tvm

    tv_name = name[len(TORCHVISION_PREFIX) :]
    known = tvm.list_models(module=tvm)
    if tv_name not in known:
        close = difflib.get_close_matches(tv_name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(TORCHVISION_PREFIX + c for c in close)}? " if close else ""
        raise ModelError(f"unknown torchvision model {name!r}: {hint}run `cnnctl models 'tv:*'` to list them")
    return ModelEntry(
        name=name,
        factory=build_torchvision,
        description=f"torchvision {tv_name}, untrained, first conv and head adapted",
        default_input=(3, 299, 299) if tv_name == "inception_v3" else (3, 224, 224),
        num_classes=1000,
        source=f"torchvision.models.{tv_name}",
        kwargs={"tv_name": tv_name},
    )
