"""Parsing of small user-facing specs ("3x32x32", "50", "64x48"). Torch-free."""

from __future__ import annotations

import re

from cnnctl.errors import UsageError

# Largest single image cnnctl will trace or train on: 2**28 values (1 GiB as float32) per image.
MAX_VALUES_PER_IMAGE = 1 << 28
MAX_CHANNELS = 4096
MAX_SIDE = 32768


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """Parse "CxHxW" into a (C, H, W) tuple, refusing malformed or absurd shapes."""
    parts = re.split(r"[x×,*]", text.strip().lower())
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"bad input shape {text!r}: write it as CxHxW, e.g. --input 3x32x32 or --input 1x28x28")
    c, h, w = (int(p) for p in parts)
    if min(c, h, w) < 1:
        raise UsageError(f"bad input shape {text!r}: every dimension must be at least 1, e.g. 3x32x32")
    if c > MAX_CHANNELS or h > MAX_SIDE or w > MAX_SIDE or c * h * w > MAX_VALUES_PER_IMAGE:
        raise UsageError(
            f"input shape {text!r} is too large ({c * h * w:,} values per image); "
            f"keep C <= {MAX_CHANNELS}, H and W <= {MAX_SIDE} and C*H*W <= {MAX_VALUES_PER_IMAGE:,}"
        )
    return c, h, w


def parse_image_size(text: str) -> tuple[int, int]:
    """Parse "50" or "HxW" into (H, W)."""
    parts = re.split(r"[x×,]", text.strip().lower())
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"bad image size {text!r}: write one number (50) or HxW (64x48)")
    sizes = [int(p) for p in parts]
    h, w = (sizes[0], sizes[0]) if len(sizes) == 1 else (sizes[0], sizes[1])
    if min(h, w) < 1 or max(h, w) > MAX_SIDE:
        raise UsageError(f"bad image size {text!r}: sides must be between 1 and {MAX_SIDE}")
    return h, w


def format_shape(shape: tuple[int, ...] | list[int]) -> str:
    """(3, 32, 32) -> "3x32x32"."""
    return "x".join(str(int(s)) for s in shape)
