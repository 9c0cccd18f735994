"""Training progress: a rich bar on a terminal, one plain line per epoch otherwise. Torch-free.

Progress goes to stderr; with --json one JSON record per epoch goes to stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from cnnctl.cli.common import err


def format_record(r: dict[str, Any]) -> str:
    parts = [f"epoch {r['epoch']}", f"train_loss {r['train_loss']:.4f}", f"train_acc {r['train_acc']:.4f}"]
    if "val_loss" in r:
        parts += [f"val_loss {r['val_loss']:.4f}", f"val_acc {r['val_acc']:.4f}"]
    if "val_map" in r:
        parts += [f"val_map {r['val_map']:.4f}"]
    if "ema_val_acc" in r:
        parts += [f"ema_val_acc {r['ema_val_acc']:.4f}"]
    parts += [f"lr {r['lr']:.3g}", f"{r['seconds']:.1f}s", f"{r['images_per_s']:.0f} img/s"]
    if "planned_steps" in r:
        parts.append(f"schedule fitted to the time limit: {r['planned_steps']} steps")
    return "  ".join(parts)


class TrainReporter:
    """Implements engine.Reporter for the CLI."""

    def __init__(self, json_lines: bool = False, bars: bool | None = None) -> None:
        self.json_lines = json_lines
        self.bars = sys.stderr.isatty() if bars is None else bars
        self.progress: Any = None
        self.task: Any = None

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        if not self.bars:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.0f} img/s"),
            TimeRemainingColumn(),
            console=err(),
            transient=True,
        )
        self.task = self.progress.add_task("train", total=batches, loss=float("nan"), ips=0.0)
        self.progress.start()

    def batch(self, done: int, loss: float, images_per_s: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, loss=loss, ips=images_per_s)

    def end_epoch(self, record: dict[str, Any], best: bool) -> None:
        self.close()
        line = format_record(record) + ("  *" if best else "")
        print(line, file=sys.stderr, flush=True)
        if self.json_lines:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class QuietReporter:
    """The reporter of torchrun ranks other than 0: rank 0 speaks for the job."""

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        pass

    def batch(self, done: int, loss: float, images_per_s: float) -> None:
        pass

    def end_epoch(self, record: dict[str, Any], best: bool) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass
