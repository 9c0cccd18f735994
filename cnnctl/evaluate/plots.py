"""Training curves and confusion matrices as PNG files (matplotlib, from the `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnctl.errors import UsageError
from cnnctl.io import atomic_path


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install 'cnnctl[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> None:
    if Path(path).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"{path}: the plot file must end in .png, .svg or .pdf")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix[1:].lower(), dpi=120, bbox_inches="tight")


def plot_histories(histories: dict[str, list[dict[str, Any]]], path: str | Path) -> None:
    """Loss and accuracy per epoch, train dashed and validation solid, one colour per run."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, epochs) in enumerate(histories.items()):
        color = f"C{i % 10}"
        x = [r["epoch"] for r in epochs]
        for key, ax, style in (
            ("train_loss", ax_loss, "--"),
            ("val_loss", ax_loss, "-"),
            ("train_acc", ax_acc, "--"),
            ("val_acc", ax_acc, "-"),
        ):
            ys = [r.get(key) for r in epochs]
            if any(v is not None for v in ys):
                ax.plot(x, ys, style, color=color, marker="o", markersize=3, label=f"{name} {key.split('_')[0]}")
    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("train (dashed) vs validation (solid)")
    _save(fig, path)
    plt.close(fig)


def plot_confusion(cm: list[list[int]], class_names: list[str], path: str | Path) -> None:
    """The confusion matrix as a heat map with counts (rows: true class, columns: predicted)."""
    plt = _pyplot()
    n = len(class_names)
    size = max(4.0, min(16.0, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 0, fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        top = max(max(row) for row in cm) or 1
        for i, row in enumerate(cm):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black")
    _save(fig, path)
    plt.close(fig)


def plot_calibration(bins: list[dict[str, Any]], ece: float, path: str | Path, title: str = "") -> None:
    """A reliability diagram: accuracy against confidence per bin, the diagonal, and the share of images per bin."""
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = (bins[0]["upper"] - bins[0]["lower"]) if bins else 1 / 15
    centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] for b in bins], width=width * 0.9, color="#2a7", label="accuracy")
    ax.bar(
        centres,
        [b["confidence"] - b["accuracy"] for b in bins],
        bottom=[b["accuracy"] for b in bins],
        width=width * 0.9,
        color="#e55",
        alpha=0.5,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} ECE {ece:.4f}".strip())
    ax.legend(loc="upper left", fontsize=8)
    total = sum(b["count"] for b in bins) or 1
    hist.bar(centres, [b["count"] / total for b in bins], width=width * 0.9, color="#888")
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("share")
    _save(fig, path)
    plt.close(fig)


def plot_lr_curve(points: list[dict[str, float]], marks: dict[str, float], path: str | Path, title: str = "") -> None:
    """The range test: loss (raw and smoothed) against the learning rate on a log axis, with the suggestions marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    lrs = [p["lr"] for p in points]
    ax.plot(lrs, [p["loss"] for p in points], color="#bbb", lw=1, label="loss")
    ax.plot(lrs, [p["smoothed"] for p in points], color="#2a7", lw=2, label="smoothed")
    for (name, lr), colour in zip(marks.items(), ("#e55", "#36c", "#888")):
        ax.axvline(lr, color=colour, ls="--", lw=1, label=f"{name} {lr:.2g}")
    ax.set_xscale("log")
    smooth = [p["smoothed"] for p in points]
    ax.set_ylim(min(smooth) * 0.9, min(max(smooth), 4 * min(smooth)) * 1.1)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_study(
    trials: list[dict[str, Any]],
    importances: dict[str, float],
    metric: str,
    maximize: bool,
    path: str | Path,
    name: str,
) -> None:
    """A search (`cnnctl tune`): every trial's value and the best so far, beside the parameter importances."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for state, marker in (("complete", "o"), ("pruned", "x")):
        points = [(r["number"], r["value"]) for r in trials if r["state"] == state]
        if points:
            left.scatter([n for n, _ in points], [v for _, v in points], marker=marker, label=state)
    best: float | None = None
    line = []
    for r in trials:
        if r["state"] == "complete" and (best is None or (r["value"] > best if maximize else r["value"] < best)):
            best = r["value"]
        line.append(best if best is not None else float("nan"))
    left.step([r["number"] for r in trials], line, where="post", label="best so far")
    left.set(xlabel="trial", ylabel=metric, title=f"study {name}: optimisation history")
    left.legend()
    names = list(importances)[::-1]
    right.barh(names, [importances[n] for n in names])
    right.set(xlabel="importance (Optuna)", title="parameter importances" if names else "importances: too few trials")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
