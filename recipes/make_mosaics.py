"""Multi-label photos from single-label ones: 2x2 mosaics of CIFAR-10 images, labelled by the set of
classes they show, written as JPEG files with one Kaggle-style label file.

    python recipes/make_mosaics.py CIFAR_DIR OUT [--train N] [--test N] [--fill 0.6] [--seed 0] [--classes a,b]

CIFAR_DIR holds train/<class>/*.jpg and test/<class>/*.jpg (../shared/data/cifar10-jpg.tar.gz,
extracted, or tests/fixtures/cifar10-mini). Each of the four tiles shows a random image with
probability `--fill`, else grey noise; an image's labels are the classes of its tiles (zero to four
of them, duplicates once). Train mosaics are cut from CIFAR's train images only and test mosaics from
its test images only, so no test photo is ever seen in training. OUT gets images/NNNNNN.jpg and
labels.csv (`path,labels,split`, labels separated by spaces, split train or test).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys

from PIL import Image

TILE = 32


def sources(root: str, split: str, only: list[str]) -> tuple[list[str], list[list[str]]]:
    """Class names and each class's image files under root/split/<class>/ (the `only` ones, if given)."""
    base = os.path.join(root, split)
    if not os.path.isdir(base):
        sys.exit(f"make_mosaics: {base} is not a folder; give CIFAR_DIR with train/ and test/ class folders")
    classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    unknown = [c for c in only if c not in classes]
    if unknown:
        sys.exit(f"make_mosaics: --classes {','.join(unknown)} not among {','.join(classes)}")
    classes = [c for c in classes if c in only] if only else classes
    files = [sorted(os.path.join(base, c, f) for f in os.listdir(os.path.join(base, c))) for c in classes]
    return classes, files


def mosaic(
    rng: random.Random, classes: list[str], files: list[list[str]], fill: float
) -> tuple[Image.Image, list[str]]:
    out = Image.new("RGB", (2 * TILE, 2 * TILE), (128, 128, 128))
    labels: set[str] = set()
    for tile in range(4):
        if rng.random() >= fill:  # an empty tile: grey noise, so no two mosaics are the same picture
            noise = Image.frombytes("L", (TILE, TILE), bytes(rng.randrange(96, 160) for _ in range(TILE * TILE)))
            out.paste(noise.convert("RGB"), ((tile % 2) * TILE, (tile // 2) * TILE))
            continue
        k = rng.randrange(len(classes))
        with Image.open(rng.choice(files[k])) as img:
            out.paste(img.convert("RGB").resize((TILE, TILE)), ((tile % 2) * TILE, (tile // 2) * TILE))
        labels.add(classes[k])
    return out, sorted(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cifar_dir")
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--test", type=int, default=4000)
    ap.add_argument("--fill", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", default="", help="comma-separated class folders to use (default: all)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    rows = []
    n = 0
    for split, count in (("train", args.train), ("test", args.test)):
        classes, files = sources(args.cifar_dir, split, [c for c in args.classes.split(",") if c])
        for _ in range(count):
            image, labels = mosaic(rng, classes, files, args.fill)
            name = f"images/{n:06d}.jpg"
            image.save(os.path.join(args.out, name), quality=95)
            rows.append((name, " ".join(labels), split))
            n += 1
    tmp = os.path.join(args.out, "labels.csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "labels", "split"])
        writer.writerows(rows)
    os.replace(tmp, os.path.join(args.out, "labels.csv"))
    print(f"{n} mosaics ({args.train} train, {args.test} test) in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
