#!/usr/bin/env bash
# Distillation on the cats-vs-dogs photos: the ImageNet EfficientNet-Lite0 probe of catdog-imagenet (224 px)
# taught to a 96 px MobileNetV2, scored on photos never used for training or selection.
#   bash recipes/catdog-distill.sh PETIMAGES_DIR [OUT] [SEEDS]
# PETIMAGES_DIR holds Cat/ and Dog/ (e.g. ../shared/data/petimages-2k.tar.gz, extracted); needs
# `pip install 'cnnctl[timm]'` for the teacher.
# 1. Weights (recipes/lay_out_weights.py offline), 2. the leak-checked split of recipes/catdog-split.sh,
# 3. the teacher: catdog-imagenet (a probe of tf_efficientnet_lite0 on cached features), scored on the
#    test photos and exported to OUT/teacher/model.onnx (the distillation runs it in onnxruntime),
# 4. for each seed in SEEDS (default "0 1 2"): the student distilled with the catdog-distill recipe
#    (OUT/kd-SEED) and the same student trained on the labels alone (--alpha 1, plain training:
#    OUT/labels-SEED); both scored on the test photos and exported to OUT/**/model.onnx,
# 5. a table: teacher vs students, accuracy and onnxruntime latency (the distill report of seed 0).
# Results measured here: docs/results.md.
set -euo pipefail
PETS=${1:?give the PetImages folder (Cat/, Dog/)}
OUT=${2:-runs/catdog-distill}
SEEDS=${3:-0 1 2}
HERE=$(cd "$(dirname "$0")" && pwd)
TEACHER=timm:tf_efficientnet_lite0

echo "== 1. ImageNet weights (teacher $TEACHER, student tv:mobilenet_v2)" >&2
source "$HERE/lite0-start.sh"  # sets START: offline the wheel's file, online timm's download

echo "== 2. train/test split of $PETS into $OUT/data" >&2
bash "$HERE/catdog-split.sh" "$PETS" "$OUT/data"

echo "== 3. the teacher (catdog-imagenet), its test score, its ONNX export" >&2
cnnctl train "$TEACHER" --recipe catdog-imagenet --data "$OUT/data" "${START[@]}" --out "$OUT/teacher" --overwrite
cnnctl eval "$OUT/teacher" --split test --json > "$OUT/teacher.test.json"
cnnctl export "$OUT/teacher"

for SEED in $SEEDS; do
    echo "== 4. seed $SEED: the student distilled, then the same student on the labels alone" >&2
    cnnctl distill --recipe catdog-distill --teacher "$OUT/teacher/model.onnx" --data "$OUT/data" --seed "$SEED" \
        --out "$OUT/kd-$SEED" --overwrite --json $([ "$SEED" = "$(echo $SEEDS | cut -d' ' -f1)" ] || echo --no-report) \
        | tail -n 1 > "$OUT/kd-$SEED.json"
    cnnctl distill --recipe catdog-distill --teacher "$OUT/teacher/model.onnx" --data "$OUT/data" --seed "$SEED" \
        --alpha 1 --out "$OUT/labels-$SEED" --overwrite --no-report --json | tail -n 1 > "$OUT/labels-$SEED.json"
    for RUN in kd labels; do
        cnnctl eval "$OUT/$RUN-$SEED" --split test --json > "$OUT/$RUN-$SEED.test.json"
        cnnctl export "$OUT/$RUN-$SEED" > /dev/null
    done
done

echo "== 5. results" >&2
python - "$OUT" $SEEDS <<'PY'
import json, sys
out, seeds = sys.argv[1], sys.argv[2:]
def acc(name):
    r = json.load(open(f"{out}/{name}.test.json"))
    return r["top1"], r["images"]
t, n = acc("teacher")
print(f"teacher  {t:.2%} on {n} test photos")
for s in seeds:
    kd, lab = acc(f"kd-{s}")[0], acc(f"labels-{s}")[0]
    print(f"seed {s}   distilled {kd:.2%}   labels alone {lab:.2%}   KD - labels {100 * (kd - lab):+.2f} points   "
          f"distilled - teacher {100 * (kd - t):+.2f} points")
report = json.load(open(f"{out}/kd-{seeds[0]}/distill.json"))
ts, st = report["teacher"], report["student"]
print(f"onnxruntime, batch 1 ({report['machine']}): teacher p50 {ts['p50_ms']:.2f} ms (p99 {ts['p99_ms']:.2f}), "
      f"student p50 {st['p50_ms']:.2f} ms (p99 {st['p99_ms']:.2f}): {report['latency_ratio']:.2f}x; "
      f"batch 32: {ts['throughput']:.0f} vs {st['throughput']:.0f} img/s")
PY
