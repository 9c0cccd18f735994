"""Helpers shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import os
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CNNCTL_SHARED_DATA", ROOT.parent / "shared" / "data"))


def matmul_gflops(n: int = 1024, seconds: float = 2.0) -> float:
    """Float32 matrix-multiply throughput of this machine right now (the compute ceiling)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - start) / 1e9


def cifar_folder(per_class: int | None = 500) -> Path:
    """Extract the real CIFAR-10 JPEGs into a temporary ImageFolder; returns its train/ folder.

    `per_class` training images of each class, or with None every image of both splits (train/
    and its sibling test/).
    """
    root = Path(tempfile.mkdtemp(prefix="cnnctl-bench-"))
    counts: dict[str, int] = {}
    with tarfile.open(SHARED / "cifar10-jpg.tar.gz") as tar:
        members = []
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile():
                continue
            if per_class is not None:
                if len(parts) < 3 or parts[-3] != "train" or counts.get(parts[-2], 0) >= per_class:
                    continue
                counts[parts[-2]] = counts.get(parts[-2], 0) + 1
            members.append(m)
        tar.extractall(root, members=members, filter="data")
    return next(root.rglob("train"))
