"""`cnnctl explain`: class-activation heatmaps (Grad-CAM, Grad-CAM++, LayerCAM) for a checkpoint.

Each image is read and preprocessed exactly as evaluation does (the checkpoint's own
`Preprocess`), the model runs forward with hooks on the target layer, and the chosen class's
score is back-propagated to it:
- Grad-CAM (Selvaraju et al. 2017): channel weights = spatial mean of the gradients;
  map = ReLU(sum_k w_k A_k).
- Grad-CAM++ (Chattopadhay et al. 2018): pixel-wise weights alpha = g^2 / (2 g^2 + sum(A) g^3),
  w_k = sum(alpha ReLU(g)) (the closed form with the exponential score, as pytorch-grad-cam uses).
- LayerCAM (Jiang et al. 2021): map = ReLU(sum_k ReLU(g_k) * A_k), element-wise.
The map is upsampled (bilinear) to the model's input, scaled to [0, 1], and its peak mapped back
through the preprocessing (stretch, or shorter-side resize + centre crop) into the input file's
pixel coordinates.

The target layer is, by default, the last module whose output still has a spatial grid (a 4-D
tensor with H, W > 1), the outermost when several end there: the last convolutional stage.
Written here (~100 lines) instead of depending on `pytorch-grad-cam`, whose dependencies
(OpenCV, scikit-learn, matplotlib, ttach; ~117 MB of wheels measured with `pip download`) would
be most of cnnctl's install for three formulas; docs/check.md ("Why not pytorch-grad-cam") has the comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnctl.errors import UsageError
from cnnctl.runtime.classifier import label_sets, probabilities
from cnnctl.runtime.preprocess import Preprocess

METHODS = ("gradcam", "gradcam++", "layercam")


def spatial_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of every named module with a 4-D output, in the order they finish."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, module in model.named_modules():
        if name:
            hooks.append(
                module.register_forward_hook(
                    lambda m, i, o, name=name: (
                        seen.append((name, tuple(o.shape))) if isinstance(o, torch.Tensor) and o.dim() == 4 else None
                    )
                )
            )
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return seen


def pick_layer(model: nn.Module, input_shape: tuple[int, ...], name: str = "") -> str:
    layers = spatial_layers(model, input_shape)
    names = [n for n, _ in layers]
    if name:
        if name not in names:
            raise UsageError(
                f"--layer {name!r}: no such layer with a spatial output; choose one of {', '.join(names[-8:])}"
            )
        return name
    gridded = [n for n, shape in layers if shape[2] > 1 or shape[3] > 1]
    if not gridded:
        raise UsageError("this model has no layer with a spatial output to explain")
    return gridded[-1]


def cam(activations: torch.Tensor, grads: torch.Tensor, method: str) -> torch.Tensor:
    """The class-activation map (h, w) of one image from its layer output and gradient (1, K, h, w)."""
    a, g = activations[0].double(), grads[0].double()
    if method == "gradcam":
        m = (g.mean((1, 2))[:, None, None] * a).sum(0)
    elif method == "gradcam++":
        g2, g3 = g.pow(2), g.pow(3)
        denom = 2 * g2 + a.sum((1, 2))[:, None, None] * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        m = ((alpha * g.clamp_min(0)).sum((1, 2))[:, None, None] * a).sum(0)
    elif method == "layercam":
        m = (g.clamp_min(0) * a).sum(0)
    else:
        raise UsageError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    return m.clamp_min(0)


def to_file_xy(x: float, y: float, prep: Preprocess, width: int, height: int) -> tuple[float, float]:
    """A point in the model's input (pixel centres, x right, y down) -> the same point in the
    original file, inverting `preprocess.decode`'s stretch or resize-then-centre-crop."""
    h, w = prep.size
    if prep.resize == "crop":
        if width <= height:
            nw, nh = prep.resize_size, int(prep.resize_size * height / width)
        else:
            nh, nw = prep.resize_size, int(prep.resize_size * width / height)
        top, left = int(round((nh - h) / 2.0)), int(round((nw - w) / 2.0))
        return (x + left + 0.5) * width / nw - 0.5, (y + top + 0.5) * height / nh - 0.5
    return (x + 0.5) * width / w - 0.5, (y + 0.5) * height / h - 0.5


@dataclass
class Explanation:
    path: str
    heatmap: np.ndarray  # (H, W) in [0, 1], at the model's input size
    view: np.ndarray  # the model's input as uint8 (C, H, W), before normalisation
    record: dict[str, Any]


class Explainer:
    """A checkpoint with hooks on one layer; `explain(path)` gives one image's heatmap and record."""

    def __init__(self, target: str, layer: str = "", method: str = "gradcam", device: str = "cpu") -> None:
        from cnnctl.models.checkpoint import TorchClassifier

        if method not in METHODS:
            raise UsageError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
        if str(target).endswith(".onnx"):
            raise UsageError(
                f"{target}: explanations need the layer gradients of the PyTorch checkpoint; give its run directory"
            )
        self.clf = TorchClassifier(target, device)
        self.model, self.meta, self.path = self.clf.model, self.clf.meta, Path(self.clf.path)
        self.model.float().eval()
        self.method, self.device = method, torch.device(device)
        self.prep: Preprocess = self.meta.preprocess
        self.layer = pick_layer(self.model, self.meta.input_shape, layer)
        self.classes = list(self.meta.class_names)
        self._store: dict[str, torch.Tensor] = {}
        module = self.model.get_submodule(self.layer)
        module.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._store["a"] = output
        output.register_hook(lambda g: self._store.__setitem__("g", g))

    def class_index(self, name: str | None) -> int | None:
        if name is None:
            return None
        if name not in self.classes:
            raise UsageError(f"--class {name!r}: the model's classes are {', '.join(self.classes[:10])}")
        return self.classes.index(name)

    def explain(self, path: str, class_index: int | None = None) -> Explanation:
        from PIL import Image

        from cnnctl.runtime.preprocess import load_image, normalize

        view = load_image(path, self.prep)
        with Image.open(path) as img:
            width, height = img.size
        x = torch.from_numpy(normalize(view[None], self.prep)).to(self.device)
        self.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            logits = self.model(x).float()
            probs = probabilities(logits.detach().cpu().numpy(), self.meta)[0]
            predicted = int(probs.argmax())
            k = predicted if class_index is None else class_index
            logits[0, k].backward()  # the class score (pre-softmax), as all three methods define it
        m = cam(self._store["a"].detach(), self._store["g"].detach(), self.method)
        h, w = self.prep.size
        up = F.interpolate(m[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        up = up - up.min()
        flat = float(up.max()) <= 0
        heat = up.numpy() if flat else (up / up.max()).numpy()
        py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
        fx, fy = to_file_xy(float(px), float(py), self.prep, width, height)
        record = {
            "path": path,
            "method": self.method,
            "layer": self.layer,
            "class": self.classes[k],
            "class_index": k,
            "prob": round(float(probs[k]), 6),
            "predicted": self.classes[predicted],
            "predicted_prob": round(float(probs[predicted]), 6),
            "peak": None if flat else {"x": round(fx, 2), "y": round(fy, 2)},
            "peak_input": None if flat else {"x": int(px), "y": int(py)},
            "file_size": {"width": width, "height": height},
            "input_size": {"width": w, "height": h},
        }
        if self.meta.multilabel:  # the class explained is one of a set: say the set too
            record["labels"] = label_sets(probs[None], self.meta)[0]
        if flat:  # no positive evidence at this layer: a peak would be a made-up point
            record["note"] = (
                f"the {self.method} map is zero everywhere at {self.layer}; try --method layercam or gradcam++, or an earlier --layer"
            )
        return Explanation(path, heat, view, record)


def jet(v: np.ndarray) -> np.ndarray:
    """The jet colour map, (H, W) in [0, 1] -> (H, W, 3) uint8, without matplotlib."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay_png(exp: Explanation, alpha: float = 0.45, scale: int = 0) -> bytes:
    """PNG bytes: the model's view of the image with the heatmap over it (upscaled for small inputs)."""
    import io

    from PIL import Image

    view = exp.view.transpose(1, 2, 0)
    rgb = np.repeat(view, 3, axis=2) if view.shape[2] == 1 else view
    mixed = (
        ((1 - alpha) * rgb.astype(np.float32) + alpha * jet(exp.heatmap).astype(np.float32)).round().astype(np.uint8)
    )
    img = Image.fromarray(mixed)
    scale = scale or max(1, 224 // max(img.size))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def explain_files(
    target: str,
    paths: list[str],
    *,
    method: str = "gradcam",
    layer: str = "",
    class_name: str | None = None,
    out_dir: str | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Heatmaps for `paths`; PNG overlays into `out_dir` (when given); the report."""
    from cnnctl.errors import DataError
    from cnnctl.io import write_bytes

    explainer = Explainer(target, layer, method, device)
    k = explainer.class_index(class_name)
    log(f"explain: {method} on layer {explainer.layer!r} of {explainer.meta.model} ({explainer.path})")
    records, failed = [], []
    for path in paths:
        try:
            exp = explainer.explain(path, k)
        except DataError as exc:
            failed.append(exc.message)
            continue
        if out_dir:
            png = Path(out_dir) / f"{Path(path).stem}.{method.replace('+', 'p')}.png"
            write_bytes(png, overlay_png(exp))
            exp.record["png"] = str(png)
        records.append(exp.record)
    if not records:
        raise DataError(f"no image could be explained: {'; '.join(failed[:3])}")
    return {
        "model": str(explainer.path),
        "method": method,
        "layer": explainer.layer,
        "images": records,
        "skipped": failed,
    }
