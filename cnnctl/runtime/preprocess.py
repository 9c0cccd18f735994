"""Image decoding and normalisation shared by training and deployment. Torch-free (PIL + numpy).

Training decodes image files with `load_image` and `cnnctl predict` does too, with the same
`Preprocess` read back from the model's metadata: the same resize, interpolation, colour
conversion and normalisation, so preprocessing cannot drift between the two.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from cnnctl.errors import DataError

# Refuse decompression bombs: more pixels than this is an error, not a warning.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class Preprocess:
    """Everything needed to turn an image file into the model's input tensor.

    `size` is (H, W). `resize` "stretch": images of another size are resized to it, aspect ratio
    not kept, as the tutorials do. `resize` "crop": the shorter side is resized to `resize_size`
    (aspect ratio kept), then the centre `size` is cut out, as torchvision's weights transforms
    (`Resize(256)` + `CenterCrop(224)`) and timm's `crop_pct` do, with the same rounding. Both
    with `interpolation`. `channels` 1 means grayscale ("L"), 3 means RGB.
    """

    channels: int
    size: tuple[int, int]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    interpolation: str = "bilinear"
    resize: str = "stretch"
    resize_size: int = 0  # "crop": the shorter side before the centre crop

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        try:
            prep = cls(
                channels=int(d["channels"]),
                size=(int(d["size"][0]), int(d["size"][1])),
                mean=[float(v) for v in d.get("mean", [])],
                std=[float(v) for v in d.get("std", [])],
                interpolation=str(d.get("interpolation", "bilinear")),
                resize=str(d.get("resize", "stretch")),
                resize_size=int(d.get("resize_size", 0)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"preprocessing metadata is malformed ({exc!r}); re-export the model") from exc
        if prep.channels not in (1, 3) or len(prep.mean) not in (0, prep.channels) or len(prep.std) != len(prep.mean):
            raise DataError("preprocessing metadata is inconsistent (channels/mean/std); re-export the model")
        if any(s <= 0 for s in prep.std) or min(prep.size) < 1:
            raise DataError("preprocessing metadata has a zero std or an empty size; re-export the model")
        if (
            prep.resize not in ("stretch", "crop")
            or prep.interpolation not in _RESAMPLE
            or (prep.resize == "crop" and prep.resize_size < max(prep.size))
        ):
            raise DataError(
                f"preprocessing metadata names an unknown resize ({prep.resize!r}, {prep.interpolation!r}, "
                f"resize_size {prep.resize_size}); re-export the model with this cnnctl"
            )
        return prep


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
}


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image (palette, CMYK, RGBA, 16-bit, ...) to "L" or "RGB"."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    want = "L" if channels == 1 else "RGB"
    if img.mode in ("RGBA", "LA", "PA"):
        # Composite on black, what a plain convert() does, so every tool agrees.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert(want) if img.mode != want else img


def decode(img: Image.Image, prep: Preprocess, out: np.ndarray | None = None) -> np.ndarray:
    """A PIL image -> uint8 array (C, H, W) at `prep.size`, written into `out` when given."""
    img = to_mode(img, prep.channels)
    h, w = prep.size
    if prep.resize == "crop":
        img = _resize_shorter_then_centre_crop(img, prep.resize_size, h, w, _RESAMPLE[prep.interpolation])
    elif img.size != (w, h):
        img = img.resize((w, h), _RESAMPLE[prep.interpolation])
    arr = np.asarray(img, dtype=np.uint8)
    chw = arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if out is None:
        return np.ascontiguousarray(chw) if arr.ndim == 3 else chw.copy()
    out[...] = chw  # one copy, straight into the destination (e.g. a row of the mapped cache)
    return out


def _resize_shorter_then_centre_crop(
    img: Image.Image, shorter: int, h: int, w: int, resample: Image.Resampling
) -> Image.Image:
    """torchvision's Resize(shorter) then CenterCrop((h, w)) on a PIL image, to the pixel."""
    iw, ih = img.size
    if iw <= ih:
        nw, nh = shorter, int(shorter * ih / iw)
    else:
        nh, nw = shorter, int(shorter * iw / ih)
    if (nw, nh) != (iw, ih):
        img = img.resize((nw, nh), resample)
    top, left = int(round((nh - h) / 2.0)), int(round((nw - w) / 2.0))
    return img.crop((left, top, left + w, top + h))


def load_image(
    path: str | Path | IO[bytes], prep: Preprocess, out: np.ndarray | None = None, *, name: str | None = None
) -> np.ndarray:
    """Read an image file (or file object) -> uint8 (C, H, W), into `out` when given.

    Unreadable input raises DataError naming `name` (default: the path) and the reason.
    """
    label = name if name is not None else str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise DataError(f"{label}: {img.width}x{img.height} exceeds the {MAX_PIXELS:,}-pixel limit")
                img.load()
                return decode(img, prep, out)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{label}: refused, too many pixels (decompression bomb?): {exc}") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{label}: no such file") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{label}: is a directory") from exc
    except PermissionError as exc:
        raise DataError(f"{label}: permission denied") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        first = str(exc).splitlines()[0].replace(" " + repr(path), "") if str(exc) else type(exc).__name__
        raise DataError(f"{label}: not a readable image ({first})") from exc


def normalize(batch: np.ndarray, prep: Preprocess) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32, scaled to [0, 1] then standardised per channel.

    The same operations, in the same order and precision, as the training batches get.
    """
    x = batch.astype(np.float32) / np.float32(255.0)
    if prep.mean:
        mean = np.asarray(prep.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(prep.std, dtype=np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    return np.asarray(x, dtype=np.float32)
