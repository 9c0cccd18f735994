"""Training steps per second on the CPU: float32 against bf16 autocast (`--amp bf16`), side by side.

The same model, batch (256 CIFAR-sized images, channels_last), SGD step and thread count, run
alternately in one process; prints images/s for both and the ratio. bf16 pays off where the CPU
has native bf16 instructions (avx512_bf16, AMX); elsewhere oneDNN emulates them.

    python -m benchmarks.cpu_bf16 [--models fastnet-s,fastnet-w,fastnet,fastnet-l] [--steps 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from cnnctl.models import create


def images_per_s(name: str, bf16: bool, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = create(name, (3, 32, 32), 10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return batch / sorted(times[2:])[len(times[2:]) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fastnet-s,fastnet-w,fastnet,fastnet-l")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {native}; batch "
        f"{args.batch}, median of {args.steps} steps"
    )
    print(f"{'model':<12}{'float32 img/s':>15}{'bf16 img/s':>12}{'bf16 / fp32':>13}")
    for name in args.models.split(","):
        fp32 = images_per_s(name, False, args.batch, args.steps)
        bf16 = images_per_s(name, True, args.batch, args.steps)
        print(f"{name:<12}{fp32:>15.0f}{bf16:>12.0f}{bf16 / fp32:>12.2f}x")


if __name__ == "__main__":
    main()
