"""The teacher: a training run (or its checkpoint) run in PyTorch, or an exported ONNX file run
in onnxruntime; always in eval mode, without gradients, on inputs in its own preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnctl.errors import UsageError
from cnnctl.io import file_sha256
from cnnctl.runtime.metadata import Metadata


@dataclass(frozen=True)
class Teacher:
    """A loaded teacher: its file, its metadata (preprocessing, classes, task), the file's hash
    (what its cached answers are keyed by), and the PyTorch module or onnxruntime classifier."""

    path: Path
    meta: Metadata
    sha256: str
    module: torch.nn.Module | None = None  # a run's checkpoint
    onnx: Any = None  # an exported file (runtime.inference.OnnxClassifier)

    @property
    def kind(self) -> str:
        return "onnx" if self.onnx is not None else "pytorch"

    def answerer(self, device: torch.device, amp: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """teacher-preprocessed batch -> logits (float32, on the batch's device): in eval mode,
        without gradients; a PyTorch teacher on `device` in the run's precision `amp`."""
        from cnnctl.train.engine import autocast

        clf = self.onnx
        if clf is not None:

            def answer_onnx(x: torch.Tensor) -> torch.Tensor:
                out = clf.logits(clf.from_normalized(x.detach().float().contiguous().cpu().numpy()))
                return torch.from_numpy(out).to(x.device)

            return answer_onnx
        assert self.module is not None
        model = self.module.to(device)
        if device.type != "mps":
            model = model.to(memory_format=torch.channels_last)
        model.eval()

        def answer_torch(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), autocast(x.device, amp):  # no_grad: the loss may keep these for its backward
                return model(x).float()

        return answer_torch

    def record(self, alpha: float, temperature: float) -> dict[str, Any]:
        """What a student's Metadata says of its teacher."""
        return {
            "model": self.meta.model,
            "source": str(self.path),
            "sha256": self.sha256,
            "kind": self.kind,
            "alpha": alpha,
            "temperature": temperature,
        }


def load_teacher(target: str) -> Teacher:
    """`--teacher RUN|CHECKPOINT|MODEL.onnx`, loaded on the CPU (`Teacher.answerer` places it)."""
    path = Path(target)
    if path.suffix == ".onnx":
        from cnnctl.runtime.inference import OnnxClassifier

        if not path.is_file():
            raise UsageError(f"--teacher {target}: no such file")
        clf = OnnxClassifier(path, "cpu")
        return Teacher(path, clf.meta, file_sha256(path), onnx=clf)
    from cnnctl.models.checkpoint import load_model

    model, meta, ckpt = load_model(target, "cpu")
    return Teacher(ckpt, meta, file_sha256(ckpt), module=model.eval())


def check_agrees(teacher: Teacher, classes: list[str], multilabel: bool) -> None:
    """The teacher must answer for the data's classes, in the data's order, with its task."""
    mine = list(teacher.meta.class_names)
    if mine != list(classes):
        if sorted(mine) == sorted(classes):
            raise UsageError(
                f"--teacher {teacher.path} orders its classes {mine[:6]} and the data {list(classes)[:6]}; "
                f"distill on data whose class order is the teacher's"
            )
        missing = [c for c in classes if c not in mine][:5]
        extra = [c for c in mine if c not in classes][:5]
        raise UsageError(
            f"--teacher {teacher.path} knows other classes than the data (the data's {missing} unknown to it"
            f"{f', its {extra} not in the data' if extra else ''}); distill with a teacher of the same classes"
        )
    if teacher.meta.multilabel != multilabel:
        kinds = ("multi-label", "single-label")
        t, d = kinds[0 if teacher.meta.multilabel else 1], kinds[0 if multilabel else 1]
        raise UsageError(f"--teacher {teacher.path} is {t} but the data is {d}; give a teacher of the data's task")
