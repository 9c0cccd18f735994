#!/usr/bin/env bash
# Transfer learning, end to end: pretrain on CIFAR-10, fine-tune on cats vs dogs, evaluate, export.
#   bash recipes/catdog-transfer.sh CIFAR10_JPG_DIR PETIMAGES_DIR [OUT]
# CIFAR10_JPG_DIR holds train/ and test/ (e.g. ../shared/data/cifar10-jpg.tar.gz, extracted);
# PETIMAGES_DIR holds Cat/ and Dog/. Results measured here: docs/results.md.
set -euo pipefail
CIFAR=${1:?give the CIFAR-10 JPEG folder (train/, test/)}
PETS=${2:?give the PetImages folder (Cat/, Dog/)}
OUT=${3:-runs/catdog-transfer}

echo "== 1. pretrain fastnet-s on CIFAR-10 (10 minutes on 2 CPU cores)" >&2
[ -f "$OUT/cifar10/model.safetensors" ] || cnnctl train --recipe cifar10-fast --data "$CIFAR" --out "$OUT/cifar10"

echo "== 2. fine-tune on the cats-vs-dogs photos, starting from it" >&2
cnnctl train --recipe catdog-transfer --data "$PETS" --init "$OUT/cifar10" --out "$OUT/pets" --overwrite

echo "== 3. the validation images it was selected on, then export" >&2
cnnctl eval "$OUT/pets" --split val
cnnctl export "$OUT/pets"
