#!/usr/bin/env bash
# Multi-label classification on real photos: CIFAR-10 mosaics labelled by the classes they show.
#   bash recipes/mosaics.sh CIFAR_DIR [OUT] [MODEL]
# CIFAR_DIR holds train/<class>/*.jpg and test/<class>/*.jpg (../shared/data/cifar10-jpg.tar.gz, extracted).
# MODEL: tv:mobilenet_v2 (default: a linear probe on its frozen ImageNet features; the weights come from
#        the usual download, or offline from recipes/lay_out_weights.py) or a registry name trained from
#        scratch at 64x64 (e.g. tiny).
# 1. 8,000 train mosaics from CIFAR's train images, 2,000 test mosaics from its test images (labels.csv:
#    path, labels, split), 2. check the label file, 3. train (thresholds tuned per class on 10% of the
#    train mosaics), 4. evaluate on the test mosaics, 5. export to ONNX and predict a few with their
#    label sets. Results measured here: docs/results.md#multi-label-cifar-10-mosaics.
set -euo pipefail
CIFAR=${1:?give the CIFAR-10 JPEG folder (train/, test/)}
OUT=${2:-runs/mosaics}
MODEL=${3:-tv:mobilenet_v2}
HERE=$(cd "$(dirname "$0")" && pwd)

echo "== 1. mosaics into $OUT/data" >&2
[ -f "$OUT/data/labels.csv" ] || python "$HERE/make_mosaics.py" "$CIFAR" "$OUT/data" --train 8000 --test 2000

echo "== 2. check the label file" >&2
cnnctl check "$OUT/data/labels.csv" --near -1 >&2

echo "== 3. train $MODEL" >&2
if [ "${MODEL#tv:}" != "$MODEL" ]; then
    python "$HERE/lay_out_weights.py" >/dev/null
    START=(--weights IMAGENET1K_V1 --freeze backbone --epochs 20 --lr 0.003 --batch-size 128)
else
    START=(--image-size 64 --epochs 12 --lr 3e-3 --scheduler onecycle --batch-size 64 --augment flip)
fi
cnnctl train "$MODEL" --data "$OUT/data/labels.csv" "${START[@]}" --out "$OUT/run" --overwrite

echo "== 4. evaluate on the test mosaics" >&2
cnnctl eval "$OUT/run" --json > "$OUT/eval.json"
cnnctl eval "$OUT/run" --top-losses 5

echo "== 5. export and predict" >&2
cnnctl export "$OUT/run" -o "$OUT/run/model.onnx"
cnnctl predict "$OUT/run/model.onnx" "$OUT"/data/images/0080{00..04}.jpg
