"""The distillation loss: alpha * task loss + (1 - alpha) * T^2 * KL(teacher || student).

As timm's LogitDistillationTask and Hinton et al.: both models' logits are softened by the
temperature T, the KL divergence of the student's from the teacher's is scaled by T^2 (so its
gradients keep their size as T changes) and mixed with the task loss on the labels. A multi-label
teacher's answers are a sigmoid per class: the divergence is then the Bernoulli one of each class.
Images only the teacher labels (label -1, `--unlabeled`) add to the divergence, not the task loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]


def labelled_rows(y: torch.Tensor, multilabel: bool) -> torch.Tensor | None:
    """The rows with labels (bool mask), or None when every row has them."""
    if not multilabel and y.dim() == 2:  # MixUp/CutMix soft targets (never mixed with unlabeled images)
        return None
    mask = (y[:, 0] >= 0) if multilabel else (y >= 0)
    return None if bool(mask.all()) else mask


def divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float, multilabel: bool) -> torch.Tensor:
    """KL(teacher || student) of the logits softened by `temperature`, per image (batch mean); for
    multi-label logits the mean over classes of each class's Bernoulli KL."""
    s, t = student.float() / temperature, teacher.float() / temperature
    if multilabel:
        p = torch.sigmoid(t)
        return F.binary_cross_entropy_with_logits(s, p) - F.binary_cross_entropy_with_logits(t, p)
    return F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="batchmean")


def distillation_loss(task: LossFn, alpha: float, temperature: float, multilabel: bool) -> LossFn:
    """The training loss of a student: `task` (the run's own loss on the labels) where the batch
    carries no teacher logits (validation) or alpha is 1; else the mix above."""

    def loss(logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        rows = labelled_rows(y, multilabel)
        if rows is None:
            hard = task(logits, y)
        elif bool(rows.any()):
            hard = task(logits[rows], y[rows])
        else:
            hard = logits.float().sum() * 0.0
        if teacher is None or alpha >= 1.0:
            return hard
        soft = divergence(logits, teacher, temperature, multilabel)
        return alpha * hard + (1.0 - alpha) * temperature * temperature * soft

    return loss
