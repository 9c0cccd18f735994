"""`--log csv|tensorboard`: the run's history where other tools read it (rank 0 only).

history.json stays the source of truth; these are copies in other formats, written at the end of
every epoch (per-step losses are kept as tensors during the epoch, so logging adds no host sync
per step on a GPU):

- csv: `history.csv` (one row per epoch, rewritten atomically) and `steps.csv` (step, epoch,
  loss, lr; one row per optimizer step).
- tensorboard: event files in `RUN/tensorboard` (tags train/*, val/*, ema/*, step/loss, step/lr),
  via torch.utils.tensorboard, which needs the `tensorboard` package (`cnnctl[tensorboard]`).

On resume both continue from the resumed step: rows and events after it (from an epoch that was
cut short) are dropped, so the logs never show a step twice.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from cnnctl.errors import UsageError
from cnnctl.io import atomic_path

TB_DIR = "tensorboard"


def check_available(kind: str) -> None:
    """Refuse --log tensorboard before the run starts when the package is missing."""
    if kind == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UsageError(
                "--log tensorboard needs the tensorboard package: pip install 'cnnctl[tensorboard]' (or use --log csv)"
            ) from None


class RunLog:
    def __init__(self, kind: str, run_dir: Path, resumed_step: int) -> None:
        self.kind, self.run_dir = kind, run_dir
        self.pending: list[tuple[int, torch.Tensor, float]] = []
        self.writer: Any = None
        if kind == "tensorboard":
            check_available(kind)
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events at or after it that a cut-short epoch left behind.
            self.writer = SummaryWriter(str(run_dir / TB_DIR), purge_step=resumed_step + 1 if resumed_step else None)
        elif kind == "csv":
            self._keep_steps_up_to(resumed_step)

    def step(self, step: int, loss: torch.Tensor, lr: float) -> None:
        self.pending.append((step, loss, lr))

    def epoch(self, record: dict[str, Any], records: list[dict[str, Any]]) -> None:
        losses = torch.stack([loss for _, loss, _ in self.pending]).tolist() if self.pending else []
        steps = [(s, loss, lr) for (s, _, lr), loss in zip(self.pending, losses)]
        self.pending = []
        if self.kind == "csv":
            self._write_history(records)
            path = self.run_dir / "steps.csv"
            new = not path.exists()
            with path.open("a", newline="") as f:
                out = csv.writer(f)
                if new:
                    out.writerow(["step", "epoch", "loss", "lr"])
                out.writerows([s, record["epoch"], f"{loss:.6g}", f"{lr:.6g}"] for s, loss, lr in steps)
        elif self.writer is not None:
            for s, loss, lr in steps:
                self.writer.add_scalar("step/loss", loss, s)
                self.writer.add_scalar("step/lr", lr, s)
            at = record["steps"]
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "steps"):
                    self.writer.add_scalar(_tag(key), value, at)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _write_history(self, records: list[dict[str, Any]]) -> None:
        keys: list[str] = []
        for rec in records:
            keys += [k for k in rec if k not in keys]
        buf = io.StringIO()
        out = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        out.writeheader()
        out.writerows(records)
        with atomic_path(self.run_dir / "history.csv") as tmp:
            tmp.write_text(buf.getvalue())

    def _keep_steps_up_to(self, step: int) -> None:
        path = self.run_dir / "steps.csv"
        if not path.exists():
            return
        rows = list(csv.reader(path.open(newline="")))
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(kept)
        with atomic_path(path) as tmp:
            tmp.write_text(buf.getvalue())


def _tag(key: str) -> str:
    """history keys -> TensorBoard tags: val_acc -> val/acc, ema_val_acc -> ema/val_acc, lr -> train/lr."""
    for prefix in ("train_", "val_", "ema_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix) :]}"
    return f"train/{key}"
