"""The layer-by-layer trace behind `cnnctl shapes`.

The trace runs a forward pass with hooks on every module. Its callers (`models.tracing`) build
the model on the meta device, so even huge inputs cost no memory or time: only shapes are computed. When the
input cannot pass, the rows up to the failing layer are kept and a diagnosis names the layer,
what it expected, what it got and the fix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from cnnctl.specs import format_shape

_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass
class LayerRow:
    """One module call in execution order."""

    name: str
    type: str
    depth: int
    leaf: bool
    input_shape: list[int]
    output_shape: list[int] | None = None
    kernel: str = ""
    stride: str = ""
    padding: str = ""
    params: int = 0
    macs: int = 0
    receptive_field: int | None = None
    jump: int | None = None
    explain: list[str] = field(default_factory=list)


@dataclass
class Trace:
    """A finished (or failed) trace, with totals. `macs` and activations are per image."""

    input_shape: list[int]
    batch: int
    rows: list[LayerRow]
    params: int
    trainable_params: int
    param_bytes: int
    macs: int = 0
    activation_bytes_per_image: int = 0
    flatten: dict[str, Any] | None = None
    diagnosis: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _fmt_pair(p: tuple[int, int]) -> str:
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"


def _geometry(m: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], bool] | None:
    """(kernel, stride, padding, dilation, ceil_mode) for conv and pool layers, else None."""
    if isinstance(m, nn.Conv2d):
        if isinstance(m.padding, str):  # "same" / "valid": resolve to numbers for the arithmetic
            k, d = _pair(m.kernel_size), _pair(m.dilation)
            pad = (0, 0) if m.padding == "valid" else ((d[0] * (k[0] - 1)) // 2, (d[1] * (k[1] - 1)) // 2)
        else:
            pad = _pair(m.padding)
        return _pair(m.kernel_size), _pair(m.stride), pad, _pair(m.dilation), False
    if isinstance(m, nn.MaxPool2d):
        stride = m.stride if m.stride is not None else m.kernel_size
        return _pair(m.kernel_size), _pair(stride), _pair(m.padding), _pair(m.dilation), bool(m.ceil_mode)
    if isinstance(m, nn.AvgPool2d):
        stride = m.stride if m.stride is not None else m.kernel_size
        return _pair(m.kernel_size), _pair(stride), _pair(m.padding), (1, 1), bool(m.ceil_mode)
    return None


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates of one conv/linear call for the whole batch (bias adds not counted)."""
    if isinstance(m, nn.Conv2d):
        k = _pair(m.kernel_size)
        return out.numel() * (m.in_channels // m.groups) * k[0] * k[1]
    if isinstance(m, nn.Linear):
        return out.numel() * m.in_features
    return 0


def _explain(geom, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> list[str]:
    (k, s, p, d, ceil) = geom
    rnd = "ceil" if ceil else "floor"
    lines = []
    for axis, i in (("H", 0), ("W", 1)):
        keff = d[i] * (k[i] - 1) + 1
        kexpr = str(k[i]) if d[i] == 1 else f"{d[i]}*({k[i]}-1)+1"
        lines.append(
            f"{axis}: {rnd}(({in_hw[i]} + 2*{p[i]} - {kexpr})/{s[i]}) + 1 = {out_hw[i]}"
            + ("" if keff <= in_hw[i] + 2 * p[i] else "  (kernel larger than padded input)")
        )
    if lines[0][3:] == lines[1][3:]:
        return ["H, W" + lines[0][1:]]
    return lines


class _Tracer:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.rows: list[LayerRow] = []
        self.stack: list[tuple[nn.Module, LayerRow]] = []
        self.seen: set[int] = set()
        self.rf: dict[int, tuple[int, int, tuple[int, ...]]] = {}  # id(tensor) -> (rf, jump, shape)
        self.keep: list[torch.Tensor] = []  # holds traced tensors so their ids stay unique
        self.names = {id(m): n for n, m in model.named_modules() if n}
        self.handles: list[Any] = []

    def __enter__(self) -> _Tracer:
        for m in self.model.modules():
            if id(m) in self.names:
                self.handles.append(m.register_forward_pre_hook(self.pre))
                self.handles.append(m.register_forward_hook(self.post))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()

    def _rf_of(self, x: torch.Tensor) -> tuple[int, int]:
        if id(x) in self.rf:
            return self.rf[id(x)][:2]
        # A tensor made by a functional op (e.g. a residual add): its receptive field is the
        # largest among traced tensors of the same shape (the max over the summed branches).
        same = [v for v in self.rf.values() if v[2] == tuple(x.shape)]
        if same:
            return max(same)[:2]
        return max(self.rf.values())[:2] if self.rf else (1, 1)

    def pre(self, m: nn.Module, args: tuple) -> None:
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        name = self.names[id(m)]
        row = LayerRow(
            name=name,
            type=type(m).__name__,
            depth=name.count(".") + 1,
            leaf=not any(True for _ in m.children()),
            input_shape=list(x.shape) if x is not None else [],
        )
        if id(m) not in self.seen:
            self.seen.add(id(m))
            row.params = sum(p.numel() for p in m.parameters())
        geom = _geometry(m)
        if geom:
            k, s, p, _, _ = geom
            row.kernel, row.stride, row.padding = _fmt_pair(k), _fmt_pair(s), _fmt_pair(p)
        self.rows.append(row)
        self.stack.append((m, row))

    def post(self, m: nn.Module, args: tuple, out: Any) -> None:
        _, row = self.stack.pop()
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if not isinstance(out, torch.Tensor):
            return
        row.output_shape = list(out.shape)
        self.keep += [out] + ([x] if x is not None else [])
        if row.leaf:
            row.macs = _macs(m, out)
            for _, anc in self.stack:
                anc.macs += row.macs
        if not row.leaf:
            # A container's output was produced by its last leaf (or a functional op inside it).
            if out.dim() == 4:
                row.receptive_field, row.jump = self._rf_of(out)
            return
        if x is None:
            return
        rf, jump = self._rf_of(x)
        geom = _geometry(m)
        if geom and x.dim() == 4 and out.dim() == 4:
            k, s, _, d, _ = geom
            rf, jump = rf + (d[0] * (k[0] - 1)) * jump, jump * s[0]
            row.explain = _explain(geom, (x.shape[2], x.shape[3]), (out.shape[2], out.shape[3]))
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and x.dim() == 4:
            h_in, h_out = x.shape[2], out.shape[2]
            rf, jump = rf + (h_in - h_out) * jump, jump * max(1, h_in // max(1, h_out))
        self.rf[id(out)] = (rf, jump, tuple(out.shape))
        if out.dim() == 4:
            row.receptive_field, row.jump = rf, jump


def _diagnose(rows: list[LayerRow], module: nn.Module, row: LayerRow, exc: Exception, built_for: str | None) -> str:
    got = format_shape(row.input_shape[1:]) if row.input_shape else "?"
    refit = (
        f"feed {built_for} (the input the model was built for), or rebuild it for this input with --fit"
        if built_for
        else "rebuild the model for this input"
    )
    if isinstance(module, nn.Linear) and row.input_shape and row.input_shape[-1] != module.in_features:
        n = row.input_shape[-1]
        spatial = next(
            (r.output_shape for r in reversed(rows[:-1]) if r.output_shape and len(r.output_shape) == 4), None
        )
        chw = f" = {format_shape(spatial[1:])}" if spatial and math.prod(spatial[1:]) == n else ""
        return (
            f"layer {row.name} (Linear) expects {module.in_features} input features but got {n}{chw}. "
            f"Fix: nn.Linear({n}, {module.out_features}) fits this input; or {refit}"
        )
    if (
        isinstance(module, nn.Conv2d)
        and row.input_shape
        and len(row.input_shape) == 4
        and row.input_shape[1] != module.in_channels
    ):
        c = row.input_shape[1]
        return (
            f"layer {row.name} (Conv2d) expects {module.in_channels} input channels but got {c} "
            f"(input {got}). Fix: give {module.in_channels}-channel input "
            f"(--input {module.in_channels}x{row.input_shape[2]}x{row.input_shape[3]}), or {refit}"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"layer {row.name} ({row.type}) cannot take input {got}: {first}. Fix: use a larger input, or {refit}"


def trace(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch: int = 1,
    *,
    built_for: tuple[int, int, int] | None = None,
) -> Trace:
    """Trace `model` on a (batch, *input_shape) input on the model's own device."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    param_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    result = Trace(list(input_shape), batch, [], params, trainable, param_bytes)
    model.eval()
    x = torch.zeros(batch, *input_shape, device=device)
    with _Tracer(model) as tracer, torch.no_grad():
        try:
            model(x)
        except Exception as exc:  # noqa: BLE001 - any failure inside the net is diagnosed
            if not tracer.stack:
                raise
            module, row = tracer.stack[-1]
            result.diagnosis = _diagnose(tracer.rows, module, row, exc, format_shape(built_for) if built_for else None)
    result.rows = tracer.rows
    leaves = [r for r in result.rows if r.leaf]
    result.macs = sum(r.macs for r in leaves) // batch
    result.activation_bytes_per_image = sum(math.prod(r.output_shape) * 4 for r in leaves if r.output_shape) // batch
    for i, r in enumerate(result.rows):
        if r.type == "Linear":
            prev = next(
                (
                    p.output_shape
                    for p in reversed(result.rows[:i])
                    if p.leaf and p.output_shape and len(p.output_shape) == 4
                ),
                None,
            )
            result.flatten = {
                "layer": r.name,
                "from": prev[1:] if prev else None,
                "features": r.input_shape[-1] if r.input_shape else None,
            }
            break
    return result


def visible_rows(rows: list[LayerRow], depth: int | None) -> list[LayerRow]:
    """Rows to show at `depth`: leaves no deeper than it, and containers exactly at it."""
    if depth is None:
        return [r for r in rows if r.leaf]
    return [r for r in rows if (r.leaf and r.depth <= depth) or r.depth == depth]
