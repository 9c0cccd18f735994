"""The lesson's own training loop vs `cnnctl train`, side by side, on the same CIFAR-10 JPEGs.

Trains the lesson-6 TinyCNN (`tiny`) the way the lesson does (torchvision ImageFolder, per-image
RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, a DataLoader with 2
workers, AdamW lr 1e-3 wd 1e-4, batch 128, zero_grad / forward / loss / backward / step), and
`cnnctl train` with the same settings (uint8 tensors in memory, batch-level augmentation,
channels_last) for the same number of epochs, then prints validation accuracy per epoch and
images/s for both, and the throughput ratio.

It answers two questions: does cnnctl's pipeline learn as fast per epoch as the lesson's loop (if
not, the gap to the lesson's figure would be cnnctl's fault), and how much faster is it.

    python -m benchmarks.lesson_loop --epochs 3 --data /tmp/cifar10-jpg   # an extracted copy
    python -m benchmarks.lesson_loop --epochs 2                           # extracts the tarball
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks._common import ROOT, cifar_folder
from cnnctl.models import create

# Mean and std of the CIFAR-10 training images (the lesson normalises with train-split numbers).
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def lesson_loop(data: Path, epochs: int, seed: int) -> list[tuple[float, float]]:
    """(val accuracy, train images/s) per epoch, trained exactly as the lesson's notebook does."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    torch.manual_seed(seed)
    norm = transforms.Normalize(MEAN, STD)
    train_tf = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]
    )
    eval_tf = transforms.Compose([transforms.ToTensor(), norm])
    order = torch.randperm(50_000, generator=torch.Generator().manual_seed(seed)).tolist()
    train_set = Subset(datasets.ImageFolder(data / "train", train_tf), order[5_000:])
    val_set = Subset(datasets.ImageFolder(data / "train", eval_tf), order[:5_000])
    train_loader = DataLoader(train_set, batch_size=128, shuffle=True, num_workers=2, persistent_workers=True)
    val_loader = DataLoader(val_set, batch_size=512, num_workers=2)

    model = create("tiny")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    results = []
    for epoch in range(1, epochs + 1):
        model.train()
        start, seen = time.perf_counter(), 0
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            seen += len(y)
        rate = seen / (time.perf_counter() - start)
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        results.append((correct / len(val_set), rate))
        print(f"lesson loop  epoch {epoch}  val_acc {correct / len(val_set):.4f}  {rate:.0f} img/s", file=sys.stderr)
    return results


def cnnctl_run(data: Path, epochs: int, seed: int) -> list[tuple[float, float]]:
    out = Path(tempfile.mkdtemp(prefix="cnnctl-lesson-run-")) / "run"
    cmd = [
        sys.executable,
        "-m",
        "cnnctl",
        "train",
        "--recipe",
        str(ROOT / "recipes" / "cifar10-tiny.toml"),
        "--data",
        str(data),
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    history = json.loads((out / "history.json").read_text())
    return [(e["val_acc"], e["images_per_s"]) for e in history["epochs"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="an extracted cifar10-jpg folder (default: extract the tarball)")
    args = parser.parse_args()
    data = args.data or cifar_folder(None).parent
    ours = cnnctl_run(data, args.epochs, args.seed)
    lesson = lesson_loop(data, args.epochs, args.seed)
    print(f"tiny on CIFAR-10 JPEGs (45,000 train / 5,000 val), {torch.get_num_threads()} threads")
    print("epoch  lesson val_acc  cnnctl val_acc  lesson img/s  cnnctl img/s  speed-up")
    for e, ((lv, lr), (cv, cr)) in enumerate(zip(lesson, ours), 1):
        print(f"{e:5d}  {lv:14.4f}  {cv:14.4f}  {lr:12.0f}  {cr:12.0f}  {cr / lr:7.2f}x")


if __name__ == "__main__":
    main()
