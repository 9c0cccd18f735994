#!/usr/bin/env bash
# A search beside the hand-tuned recipe: `cnnctl tune` on an ImageNet probe of the cats-vs-dogs photos.
#   bash recipes/catdog-tune.sh PETIMAGES_DIR [OUT] [TRIALS]
# PETIMAGES_DIR holds Cat/ and Dog/ (e.g. ../shared/data/petimages-2k.tar.gz, extracted); needs
# `pip install 'cnnctl[timm,tune]'`.
# 1. Weights (recipes/lay_out_weights.py offline), 2. the leak-checked split of recipes/catdog-split.sh,
# 3. the hand-tuned catdog-imagenet recipe trained and scored on the test photos (the baseline),
# 4. `cnnctl tune --recipe catdog-imagenet` over the recipe's [tune.space] (TRIALS trials, default 30,
#    compared on val_loss; the first trial is the recipe's own values; every trial trains the head on the
#    same cached backbone features), 5. the best trial scored on the same test photos (never used for
#    training or selection) and exported. Results measured here: docs/results.md.
set -euo pipefail
PETS=${1:?give the PetImages folder (Cat/, Dog/)}
OUT=${2:-runs/catdog-tune}
TRIALS=${3:-30}
HERE=$(cd "$(dirname "$0")" && pwd)
MODEL=timm:tf_efficientnet_lite0

echo "== 1. ImageNet weights for $MODEL" >&2
source "$HERE/lite0-start.sh"  # sets START: offline the wheel's file, online timm's download

echo "== 2. train/test split of $PETS into $OUT/data" >&2
bash "$HERE/catdog-split.sh" "$PETS" "$OUT/data"

echo "== 3. the hand-tuned recipe (baseline)" >&2
cnnctl train "$MODEL" --recipe catdog-imagenet --data "$OUT/data" "${START[@]}" --out "$OUT/hand-tuned" --overwrite
cnnctl eval "$OUT/hand-tuned" --split test --json > "$OUT/hand-tuned.test.json"

echo "== 4. the search: $TRIALS trials" >&2
rm -rf "$OUT/tune"
SECONDS=0
cnnctl tune "$MODEL" --recipe catdog-imagenet --data "$OUT/data" "${START[@]}" --metric val_loss \
    --trials "$TRIALS" --out "$OUT/tune" --json > "$OUT/tune.json"
echo "the search took $SECONDS s" >&2

echo "== 5. the best trial on the test photos, then export" >&2
BEST=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["best"]["run_dir"])' "$OUT/tune.json")
cnnctl eval "$BEST" --split test --json > "$OUT/best.test.json"
cnnctl export "$BEST"
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("hand-tuned", "best"):
    r = json.load(open(f"{out}/{name}.test.json"))
    print(f"{name:10s} test accuracy {r['top1']:.2%} ({round((1 - r['top1']) * r['images'])} errors of {r['images']}), loss {r['loss']:.4f}")
PY
