"""Data-parallel training under torchrun: who this process is, and the few collectives it needs.

`torchrun --nproc-per-node N -m cnnctl train ...` starts N copies of `cnnctl train` with RANK,
WORLD_SIZE and LOCAL_RANK set. `Dist.from_env()` reads them; `start()` joins the process group
(NCCL on CUDA, Gloo on CPU). Every rank walks the same shuffled global batches and trains on its
slice of each (`Batches(rank=, world=)`), DDP averages the gradients, and the helpers here make
every decision that could split the ranks (stop now? was this epoch the best?) from numbers that
are identical on every rank. Only rank 0 writes files and prints.

A single process is `Dist()` (rank 0 of 1): every helper is then a no-op, so the one epoch loop
serves both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cnnctl.errors import CnnctlError, DistributedError, PeerFailed, UsageError

# How long a collective may wait for a silent peer before this rank gives up (seconds).
TIMEOUT_ENV = "CNNCTL_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(
            f"environment variable {name}={value!r} is not an integer; launch with torchrun, which sets it"
        ) from None


@dataclass
class Dist:
    """This process's place in the job; `Dist()` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = ""
    started: bool = False

    @classmethod
    def from_env(cls) -> Dist:
        world = _env_int("WORLD_SIZE", 1)
        if world <= 1:
            return cls()
        rank = _env_int("RANK", 0)
        local_rank = _env_int("LOCAL_RANK", 0)
        local_world = _env_int("LOCAL_WORLD_SIZE", world)
        if not 0 <= rank < world:
            raise UsageError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun, which sets both")
        if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
            raise UsageError(
                "WORLD_SIZE is set but MASTER_ADDR/MASTER_PORT are not; launch with torchrun, which sets them"
            )
        return cls(rank, world, local_rank, local_world)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        if self.enabled and batch_size % self.world_size:
            raise UsageError(
                f"--batch-size {batch_size} is the global batch and must split evenly over {self.world_size} "
                f"processes; use a multiple of {self.world_size}"
            )

    def start(self, device_type: str) -> None:
        """Join the process group: NCCL for CUDA, Gloo otherwise."""
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_available():
            raise UsageError("this torch build has no torch.distributed; run without torchrun")
        self.backend = "nccl" if device_type == "cuda" else "gloo"
        timeout = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
        try:
            dist.init_process_group(self.backend, timeout=timedelta(seconds=timeout))
            self.started = True
        except Exception as exc:  # rendezvous problems: wrong address, a port in use, a peer gone
            raise DistributedError(
                f"rank {self.rank}: could not join the process group ({_first_line(exc)}); check torchrun's "
                "--rdzv-endpoint / --master-addr and that every node runs the same command"
            ) from None

    def stop(self, clean: bool) -> None:
        """Leave the group. After success all ranks wait for each other (rank 0 runs the test
        pass last) and tear down together: a rank that destroys its group while a peer still
        uses it can abort at exit. After a failure there is nothing to wait for, and a
        collective teardown could hang, so the process just exits (torchrun cleans up)."""
        if not self.started:
            return
        import gc

        import torch.distributed as dist

        self.started = False
        if not clean:
            return
        try:
            dist.barrier()
            gc.collect()  # drop the DDP reducer, which holds the group, before the group goes
            dist.destroy_process_group()
        except Exception:  # a peer already gone: nothing left to tear down cleanly
            pass

    def label(self, exc: CnnctlError) -> CnnctlError:
        """Mark an error on a rank other than 0: quiet if every rank hits it alike (set-up before
        the group formed, rank 0 reports it), otherwise prefixed with this rank's number."""
        if not self.is_main and not isinstance(exc, DistributedError):
            if not self.started:
                exc.quiet = True
            elif not exc.message.startswith("rank "):
                exc.message = f"rank {self.rank}: {exc.message}"
        return exc

    # Collectives. Each is a no-op on one process; on several, every rank must call it.

    def _device(self) -> Any:
        import torch

        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def _all_reduce(self, values: list[float], op: str) -> list[float]:
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        try:
            dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        except Exception as exc:
            raise self.lost(exc) from None
        return t.tolist()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (e.g. loss totals, correct counts, image counts)."""
        return self._all_reduce(values, "sum") if self.enabled else list(values)

    def gather(self, rows: Any) -> Any:
        """Every rank's float rows (N_rank, K) concatenated in rank order (a multi-label validation's
        scores and targets: average precision needs them all)."""
        if not self.enabled:
            return rows
        import torch
        import torch.distributed as dist

        t = rows.to(self._device(), torch.float32)
        counts = [
            int(c)
            for c in self._all_reduce([float(len(t)) if r == self.rank else 0.0 for r in range(self.world_size)], "sum")
        ]
        padded = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        try:
            dist.all_gather(parts, padded)
        except Exception as exc:
            raise self.lost(exc) from None
        return torch.cat([p[:c] for p, c in zip(parts, counts)]).cpu()

    def broadcast(self, message: Any) -> Any:
        """Rank 0's JSON-able `message` on every rank (a search's next trial, or None to stop); sent
        as UTF-8 JSON bytes, never pickled."""
        if not self.enabled:
            return message
        import json

        import torch
        import torch.distributed as dist

        data = json.dumps(message).encode() if self.is_main else b""
        (size,) = self._all_reduce([float(len(data)) if self.is_main else 0.0], "max")
        buffer = torch.zeros(int(size), dtype=torch.uint8, device=self._device())
        if self.is_main:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        try:
            dist.broadcast(buffer, src=0)
        except Exception as exc:
            raise self.lost(exc) from None
        return json.loads(bytes(buffer.cpu().numpy().tobytes()).decode())

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag made true on every rank if it is true on any (stop requests, deadlines)."""
        if not self.enabled:
            return tuple(flags)
        return tuple(v > 0 for v in self._all_reduce([float(f) for f in flags], "max"))

    def agree(self, ok: bool) -> None:
        """A set-up step that may fail on one rank only (rank 0's run directory): all go on or all stop.

        A rank that failed calls `agree(False)` and then raises its own error; the others raise
        PeerFailed, which the CLI keeps quiet about.
        """
        if not self.enabled:
            return
        (failed,) = self.any(not ok)
        if failed and ok:
            raise PeerFailed("another rank failed during set-up")

    def sync_buffers(self, model: Any) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank before validating."""
        if not self.enabled:
            return
        import torch.distributed as dist

        try:
            for buf in model.buffers():
                dist.broadcast(buf, 0)
        except Exception as exc:
            raise self.lost(exc) from None

    def wrap(self, model: Any, device: Any) -> Any:
        """The model DDP trains (the unwrapped `model` is what gets saved)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def lost(self, exc: BaseException) -> DistributedError:
        return DistributedError(
            f"rank {self.rank}: lost contact with the other ranks ({_first_line(exc)}); one of them died or was "
            "killed, so the job stops. Rank 0's run directory holds the last finished epoch: "
            "relaunch the same torchrun command with --resume RUN_DIR"
        )


def is_comm_error(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because a peer went away (Gloo/NCCL errors)."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(k in text for k in ("gloo", "nccl", "connection", "timed out", "peer"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
