"""What RandAugment / TrivialAugment / MixUp / CutMix cost per batch, against the training step they ride on.

Real images (the committed CIFAR-10 and PetImages fixtures, repeated to fill a batch), the
policies as `cnnctl train` runs them (torchvision.transforms.v2 on uint8 batches, one draw per
`--aug-group` images), timed against one forward/backward/step of the recipe's model on a batch
of the same shape, float32 and bf16 autocast, in the same process.

    python -m benchmarks.augment_cost [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._common import ROOT
from cnnctl.data.policies import BatchMix, PolicyAugment, seeded
from cnnctl.data.sources import load_source
from cnnctl.models import create

CIFAR_MINI = ROOT / "tests" / "fixtures" / "cifar10-mini"
PETS_MINI = ROOT / "tests" / "fixtures" / "petimages-mini"


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def batch_of(folder, size: int, n: int, cache: str) -> torch.Tensor:
    src = load_source(
        str(folder),
        "",
        False,
        (size, size),
        False,
        cache,
        lambda m: None,
        "crop" if size > 32 else "stretch",
        0.875,
        "bilinear",
    )
    x = src.train.images(torch.arange(len(src.train)))
    return x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n].contiguous()


def step_ms(model_name: str, x: torch.Tensor, classes: int, bf16: bool, repeats: int) -> float:
    model = create(model_name, tuple(x.shape[1:]), classes).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xf = x.float().div(255).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (x.shape[0],))

    def step() -> None:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(xf).float(), y)
        loss.backward()
        opt.step()

    return median_ms(step, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import tempfile

    cache = tempfile.mkdtemp(prefix="cnnctl-aug-")
    cases = [
        ("CIFAR-10 32x32, batch 256, fastnet-s", CIFAR_MINI, 32, 256, "fastnet-s", 10),
        ("PetImages 224x224, batch 64, tv:resnet18", PETS_MINI, 224, 64, "tv:resnet18", 2),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} ms per batch")
    for title, folder, size, n, model_name, classes in cases:
        x = batch_of(folder, size, n, cache)
        steps = {bf16: step_ms(model_name, x, classes, bf16, args.repeats) for bf16 in (False, True)}
        print(f"\n{title}: training step {steps[False]:.1f} ms float32, {steps[True]:.1f} ms bf16")
        print(f"{'augmentation':<34}{'ms/batch':>10}{'/ step fp32':>13}{'/ step bf16':>13}")
        rows = []
        for policy in ("randaugment", "trivialaugment"):
            for group in (1, 8, 32, n):
                aug = PolicyAugment(policy, group=group)
                rows.append((f"{policy} --aug-group {group}", lambda aug=aug: aug(x)))
        xf = x.float()
        y = torch.arange(n) % classes
        rows.append(("mixup 0.2", lambda: BatchMix(classes, mixup=0.2)(xf, y)))
        rows.append(("cutmix 1.0", lambda: BatchMix(classes, cutmix=1.0)(xf, y)))
        for name, fn in rows:
            with seeded(0):
                ms = median_ms(fn, args.repeats)
            print(f"{name:<34}{ms:>10.1f}{ms / steps[False]:>12.1%}{ms / steps[True]:>12.1%}")


if __name__ == "__main__":
    main()
