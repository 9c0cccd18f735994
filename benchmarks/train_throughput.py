"""Training throughput: the classic tutorial loop vs cnnctl's loop, side by side in one process.

Baseline: torchvision dataset + per-sample transforms (ToTensor, Normalize, and for CIFAR the
RandomCrop/Flip of lesson 6) + DataLoader, then zero_grad / forward / loss / backward / step.
cnnctl: uint8 tensors in memory, batch-level augmentation and normalisation, channels_last,
engine.train_one_epoch. Same model, optimizer, batch size and number of batches.

Also prints cnnctl's training GFLOP/s (3 x 2 x MACs per image from the shapes trace, times
images/s) as a share of a float32 matrix-multiply probe run in the same process.

    python benchmarks/train_throughput.py [--batches 40]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
import torchvision.transforms as T

from benchmarks._common import SHARED, cifar_folder, matmul_gflops
from cnnctl.config import TrainConfig
from cnnctl.data.batches import Augmentation, Batches, Order
from cnnctl.data.bundle import build
from cnnctl.models import create
from cnnctl.models.tracing import trace_model
from cnnctl.train.engine import Loop, make_loss, train_one_epoch
from cnnctl.train.plan import resolve_preprocessing


def tutorial_loop(model, loader, batches: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    seen, it = 0, iter(loader)
    x, y = next(it)  # warm-up batch (workers start, first allocations)
    start = time.perf_counter()
    for _ in range(batches):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        seen += y.shape[0]
    return seen / (time.perf_counter() - start)


class _Take:
    def __init__(self, batches: Batches, n: int) -> None:
        self.batches, self.n = batches, n

    def __iter__(self):
        count = 0
        while True:
            for item in self.batches.epoch(count):
                if count >= self.n:
                    return
                yield item
                count += 1


def cnnctl_loop(model, batches: Batches, n: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = make_loss("ce", 10)
    loop = Loop(model, opt, loss_fn, batches)
    train_one_epoch(loop, _Take(batches, 2), lambda s: 1e-3, 0)  # warm-up
    stats, _ = train_one_epoch(loop, _Take(batches, n), lambda s: 1e-3, 0)
    return stats.images / stats.seconds


def case(name, model_name, tutorial_loader, cfg, batch_size, augment, n, gflops):
    torch.manual_seed(0)
    data = build(resolve_preprocessing(cfg, None).data_config(), log=lambda m: None)
    shape, classes = data.input_shape, len(data.classes)
    base = tutorial_loop(create(model_name, shape, classes), tutorial_loader, n)
    results = {}
    for cl in (False, True):
        model = create(model_name, shape, classes)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        b = Batches(
            data.train,
            data.prep,
            batch_size,
            channels_last=cl,
            order=Order(shuffle=True),
            augmentation=Augmentation(augment=augment),
        )
        results[cl] = cnnctl_loop(model, b, n)
    macs = trace_model(model_name, shape, fit=True).macs
    train_gflops = results[True] * 6 * macs / 1e9
    print(
        f"{name}: tutorial {base:8.0f} img/s | cnnctl NCHW {results[False]:8.0f} img/s | cnnctl channels_last "
        f"{results[True]:8.0f} img/s | ratio {results[True] / base:5.2f}x | channels_last/NCHW {results[True] / results[False]:4.2f}x | "
        f"{train_gflops:6.1f} GFLOP/s = {train_gflops / gflops:4.2f} of matmul"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    gflops = matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 matmul probe: {gflops:.1f} GFLOP/s")

    mnist_tf = T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))])
    mnist = torchvision.datasets.MNIST(str(SHARED), train=True, transform=mnist_tf)
    loader = torch.utils.data.DataLoader(mnist, batch_size=100, shuffle=True, num_workers=0)
    case(
        "model-a / MNIST, batch 100",
        "model-a",
        loader,
        TrainConfig(model="model-a", data="mnist", data_dir=str(SHARED)),
        100,
        "none",
        args.batches,
        gflops,
    )

    folder = cifar_folder(500)
    cifar_tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
        ]
    )
    cifar = torchvision.datasets.ImageFolder(str(folder), transform=cifar_tf)
    loader = torch.utils.data.DataLoader(cifar, batch_size=128, shuffle=True, num_workers=2, persistent_workers=True)
    case(
        "tiny / CIFAR-10 JPEGs, batch 128, flip-crop",
        "tiny",
        loader,
        TrainConfig(model="tiny", data=str(folder.parent), cache_dir=str(folder.parent / "cache")),
        128,
        "flip-crop",
        args.batches,
        gflops,
    )


if __name__ == "__main__":
    main()
