"""A progress line for long passes over files: self-rewriting on a terminal, silent otherwise. Torch-free."""

from __future__ import annotations

import sys
import time


class Meter:
    """`verb` N/total, rate and ETA on stderr (a terminal only), at most four times a second;
    `summary()` ends with `where` (e.g. "into /cache/pixels-KEY.u8", "on 2 processes")."""

    def __init__(
        self, total: int, where: str, verb: str = "decoding images", done: str = "decoded", unit: str = "images"
    ) -> None:
        self.total, self.where, self.verb, self.done, self.unit = total, where, verb, done, unit
        self.start = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.tty or (now - self.last < 0.25 and done < self.total):
            return
        self.last = now
        rate = done / max(1e-9, now - self.start)
        eta = (self.total - done) / max(1e-9, rate)
        sys.stderr.write(f"\r{self.verb} {done}/{self.total}  {rate:.0f}/s  ETA {eta:.0f}s ")
        if done >= self.total:
            sys.stderr.write("\r\033[K")
        sys.stderr.flush()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def summary(self) -> str:
        return f"{self.done} {self.total} {self.unit} in {self.seconds:.1f}s ({self.total / max(1e-9, self.seconds):.0f}/s) {self.where}"
