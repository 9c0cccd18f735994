"""The decode cache: an image folder's uint8 pixels in one memory-mapped file, shared by processes.

What it holds is pixels only, one row per listed file, in listing order. It never holds labels:
those are derived from the current folder listing at every run, so the same files read under
another class mapping can never come back with old labels.

The key is the identity of the files (path, size, mtime, in order) plus the decode settings
(every field of `Preprocess` but mean/std: channels, size, interpolation, resize mode and size).
A cache entry is two files in the cache folder:

    pixels-<key>.u8     raw uint8, shape (N, C, H, W), C-contiguous, no header
    pixels-<key>.json   {"format", "key", "shape", "dtype", "failed": {row: reason}}: written last

An entry is complete only when the JSON exists, names the same key and shape, and the data file
has exactly N*C*H*W bytes. Decoding writes to a temporary file that is renamed into place, under
an exclusive lock (flock) on `pixels-<key>.lock` (`cached_array`, which the feature cache of
cnnctl/train/features.py uses too): a second process (another torchrun rank, a
parallel eval) waits for the first and then maps the same file, so the pixels sit once in the
page cache whatever the number of processes; a kill during decoding leaves no entry that looks
complete, and the next run decodes again.

The mapping is private (copy-on-write) and never written, so its pages are file-backed: they do not
count towards a process's anonymous memory, and the kernel can drop them under pressure.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnctl.errors import DataError
from cnnctl.progress import Meter
from cnnctl.runtime.preprocess import Preprocess, load_image

FORMAT = 2
# Files per unit of work handed to the decode workers: bounds the futures held at once.
WINDOW = 512

Log = Callable[[str], None]


def cache_key(files: list[str], prep: Preprocess) -> str:
    """The identity of a decode: the files (path, size, mtime, order) and how they are decoded."""
    # Every field of the preprocessing that decides pixels (all but the normalisation, applied per
    # batch later), so a setting added to Preprocess can never share an entry with another value.
    decode = {"format": FORMAT, **{k: v for k, v in prep.to_dict().items() if k not in ("mean", "std")}}
    h = hashlib.sha256(json.dumps(decode, sort_keys=True).encode())
    hash_files(h, files)
    return h.hexdigest()[:32]


def hash_files(h: Any, files: list[str]) -> None:
    """Feed the identity of `files` (path, size, mtime in ns, in order) into `h`; a file that
    vanished since the listing counts as "missing" (decoding reports it as unreadable)."""
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            h.update(f"{f}\0missing\n".encode())
            continue
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


class Pixels:
    """Decoded pixels of a list of files: `array` (N, C, H, W) uint8 and the rows that failed."""

    def __init__(self, array: torch.Tensor, failed: dict[int, str], key: str, path: Path | None) -> None:
        self.array = array
        self.failed = failed
        self.key = key
        self.path = path  # the mapped cache file, or None when decoded into memory

    @property
    def ok_rows(self) -> list[int]:
        return [i for i in range(self.array.shape[0]) if i not in self.failed]


def load_pixels(files: list[str], prep: Preprocess, cache_dir: Path | None, log: Log) -> Pixels:
    """Pixels of `files` decoded with `prep`: from the cache if complete, else decoded (and cached)."""
    key = cache_key(files, prep)
    shape = (len(files), prep.channels, *prep.size)
    if cache_dir is None:
        return _decode_in_memory(files, prep, key, log)
    data = cache_dir / f"pixels-{key}.u8"

    def decode(tmp: Path) -> dict:
        failed = _decode_rows_in_processes(files, prep, tmp, shape, log, str(cache_dir))
        return {"failed": {str(i): m for i, m in failed.items()}}

    try:
        entry = cached_array(data, key, shape, torch.uint8, decode, log, "decoding these images", format=FORMAT)
    except OSError as exc:
        log(f"cannot use the decode cache in {cache_dir} ({exc.strerror or exc}); decoding into memory")
        return _decode_in_memory(files, prep, key, log)
    try:
        failed = {int(k): str(v) for k, v in entry.info.get("failed", {}).items()}
    except (AttributeError, ValueError):
        raise DataError(
            f"the decode cache {data.with_suffix('.json')} is damaged; remove {cache_dir} and retry"
        ) from None
    return Pixels(entry.array, failed, key, data)


class Entry:
    """A complete cache entry: the mapped array and its JSON record."""

    def __init__(self, array: torch.Tensor, info: dict) -> None:
        self.array, self.info = array, info


def cached_array(
    data: Path,
    key: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    fill: Callable[[Path], dict],
    log: Log,
    busy: str,
    *,
    format: int,
) -> Entry:
    """The array cached at `data` under `key`, made by `fill(tmp)` when it is not complete yet.

    `fill` writes the array's raw bytes into the preallocated temporary file `tmp` and returns what
    else the entry records. Under an exclusive flock on `<data>.lock` the first process fills, the
    others wait (logging `busy`) and map the same file; the data file is fsynced and renamed into
    place before its JSON is written, so a kill at any point leaves nothing that looks complete.
    An OSError (no cache folder, a full disk) is the caller's to fall back on.
    """
    hit = _open_complete(data, key, shape, dtype, format)
    if hit is not None:
        return hit
    data.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(data.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o666)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process that is {busy} into {data.name}")
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        hit = _open_complete(data, key, shape, dtype, format)  # the process we waited for may have written it
        if hit is not None:
            return hit
        info = _fill_file(data, shape, dtype, fill)
        from cnnctl.io import write_json

        write_json(
            data.with_suffix(".json"),
            {"format": format, "key": key, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."), **info},
        )
        hit = _open_complete(data, key, shape, dtype, format)
        if hit is None:
            raise DataError(
                f"the cache entry {data} could not be read back after writing it; remove {data.parent} and retry"
            )
        return hit
    finally:
        os.close(lock_fd)  # releases the flock


def _open_complete(data: Path, key: str, shape: tuple[int, ...], dtype: torch.dtype, format: int) -> Entry | None:
    """Map a complete cache entry, or None (absent, partial, or not this key's)."""
    try:
        info = json.loads(data.with_suffix(".json").read_text())
        size = data.stat().st_size
    except (OSError, ValueError):
        return None
    count = int(np.prod(shape))
    nbytes = count * dtype.itemsize
    if (
        not isinstance(info, dict)
        or info.get("format") != format
        or info.get("key") != key
        or info.get("shape") != list(shape)
        or size != nbytes
    ):
        return None
    if info.get("dtype", "uint8") != str(dtype).removeprefix("torch."):
        return None
    array = (
        torch.from_file(str(data), shared=False, size=count, dtype=dtype).view(shape)
        if count
        else torch.zeros(shape, dtype=dtype)
    )
    return Entry(array, info)


def _fill_file(data: Path, shape: tuple[int, ...], dtype: torch.dtype, fill: Callable[[Path], dict]) -> dict:
    """`fill` a temporary file beside `data`, fsync it and rename it into place."""
    for stale in data.parent.glob(f".{data.name}.*.partial"):  # left by a killed writer; we hold the lock
        stale.unlink(missing_ok=True)
    tmp = data.with_name(f".{data.name}.{os.getpid()}.partial")
    nbytes = int(np.prod(shape)) * dtype.itemsize
    try:
        with open(tmp, "wb") as fh:
            if nbytes:
                # Reserve the blocks now: a full disk is an OSError here, not a SIGBUS mid-write.
                os.posix_fallocate(fh.fileno(), 0, nbytes)
        info = fill(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return info


def _decode_rows(path: str, shape: tuple[int, ...], start: int, files: list[str], prep: Preprocess) -> dict[int, str]:
    """Worker: decode `files` into rows start.. of the mapped file at `path` -> {row: reason} of failures."""
    out = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
    failed: dict[int, str] = {}
    for offset, f in enumerate(files):
        try:
            load_image(f, prep, out[start + offset])
        except DataError as exc:
            failed[start + offset] = exc.message
    out.flush()
    return failed


def _worker_init() -> None:
    """Decode workers leave Ctrl-C to the parent and die with it (no orphans after a SIGKILL)."""
    import ctypes
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _decode_rows_in_processes(
    files: list[str], prep: Preprocess, tmp: Path, shape: tuple[int, ...], log: Log, where: str
) -> dict[int, str]:
    """Decode on every core: worker processes write their rows straight into the mapped file.

    Processes, not threads: PIL holds the GIL for part of the work on every image; a thread pool
    measured 0.64x torchvision's DataLoader with as many worker processes, these 0.83-0.89x while
    also writing the cache (docs/benchmarks.md).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    meter = Meter(len(files), f"into {where}")
    failed: dict[int, str] = {}
    workers = max(1, min(len(files) // WINDOW + 1, os.cpu_count() or 1))
    if workers == 1:
        for start in range(0, len(files), WINDOW):
            failed.update(_decode_rows(str(tmp), shape, start, files[start : start + WINDOW], prep))
            meter.update(min(len(files), start + WINDOW))
    else:
        # fork: workers start at once and need nothing re-imported; they only run PIL and numpy.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init)
        try:
            jobs = [
                pool.submit(_decode_rows, str(tmp), shape, start, files[start : start + WINDOW], prep)
                for start in range(0, len(files), WINDOW)
            ]
            done = 0
            for job in jobs:
                failed.update(job.result())
                done = min(len(files), done + WINDOW)
                meter.update(done)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    log(meter.summary())
    return failed


def _decode_in_memory(files: list[str], prep: Preprocess, key: str, log: Log) -> Pixels:
    """Without a usable cache folder: decode on a thread pool into memory."""
    out = np.empty((len(files), prep.channels, *prep.size), dtype=np.uint8)

    def one(i: int) -> str | None:
        try:
            load_image(files[i], prep, out[i])
        except DataError as exc:
            return exc.message
        return None

    failed: dict[int, str] = {}
    meter = Meter(len(files), "into memory")
    with ThreadPoolExecutor(max_workers=max(1, min(16, (os.cpu_count() or 1) * 2))) as pool:
        for start in range(0, len(files), WINDOW):
            rows = range(start, min(len(files), start + WINDOW))
            for i, message in zip(rows, pool.map(one, rows)):
                if message is not None:
                    failed[i] = message
            meter.update(rows.stop)
    log(meter.summary())
    return Pixels(torch.from_numpy(out), failed, key, None)
