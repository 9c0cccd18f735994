"""Imbalanced classes: per-class loss weights (`--class-weights`) and balanced sampling (`--sampler balanced`).

Both are computed from the training split's own labels (never validation or test). Weights are
normalised so that their mean over the training images is 1 (the loss keeps its scale, so a
learning rate tuned without weights still fits).
"""

from __future__ import annotations

import torch

from cnnctl.errors import UsageError
from cnnctl.io import read_json

EFFECTIVE_BETA = 0.999


def class_counts(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(y.to(torch.int64), minlength=num_classes).to(torch.float64)


def loss_weights(spec: str, counts: torch.Tensor, classes: list[str]) -> torch.Tensor | None:
    """The weight of each class in the loss for `--class-weights spec`, or None for none."""
    if spec == "none":
        return None
    if (counts == 0).any():
        empty = [c for c, n in zip(classes, counts.tolist()) if n == 0]
        raise UsageError(
            f"--class-weights: class(es) {', '.join(empty[:5])} have no training images; remove them or add images"
        )
    if spec == "auto":
        raw = counts.sum() / (len(classes) * counts)
    elif spec == "effective":
        raw = (1 - EFFECTIVE_BETA) / (1 - EFFECTIVE_BETA**counts)
    else:
        given = read_json(
            spec, UsageError, f"--class-weights {spec}: no such file", "give a JSON object of {class: weight}"
        )
        if (
            not isinstance(given, dict)
            or set(given) != set(classes)
            or not all(isinstance(v, (int, float)) and v > 0 for v in given.values())
        ):
            raise UsageError(
                f"--class-weights {spec} must give a positive weight for exactly the classes {', '.join(classes[:10])}"
            )
        raw = torch.tensor([float(given[c]) for c in classes], dtype=torch.float64)
    mean = (raw * counts).sum() / counts.sum()  # the average weight an image gets
    return (raw / mean).to(torch.float32)


def pos_weights(spec: str, y: torch.Tensor, classes: list[str]) -> torch.Tensor | None:
    """Multi-label `--class-weights`: each class's positive weight in binary cross-entropy
    (BCEWithLogitsLoss's pos_weight): auto = negatives / positives of the class in the training
    split (PyTorch's advice), or a JSON file {class: weight}; `effective` is for single-label runs."""
    if spec == "none":
        return None
    positives = (y > 0.5).sum(0).to(torch.float64)
    if spec == "effective":
        raise UsageError(
            "--class-weights effective weighs single-label classes; multi-label runs take auto or a JSON file"
        )
    if spec == "auto":
        if (positives == 0).any():
            empty = [c for c, n in zip(classes, positives.tolist()) if n == 0]
            raise UsageError(
                f"--class-weights: class(es) {', '.join(empty[:5])} have no training images; remove them or add images"
            )
        return ((len(y) - positives) / positives).to(torch.float32)
    weights = loss_weights(spec, positives.clamp_min(1), classes)
    assert weights is not None
    return weights


def balanced_sample_weights(y: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """A weight per training image so that each class is drawn with the same probability."""
    return (1.0 / counts)[y.to(torch.int64)].to(torch.float64)


def describe(weights: torch.Tensor, counts: torch.Tensor, classes: list[str], limit: int = 8) -> str:
    parts = [f"{c} {w:.3g} ({int(n)})" for c, w, n in zip(classes, weights.tolist(), counts.tolist())]
    return ", ".join(parts[:limit]) + (", ..." if len(parts) > limit else "")
