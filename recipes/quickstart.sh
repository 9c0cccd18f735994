#!/usr/bin/env bash
# The README's main job, offline: train -> eval (gated) -> export -> predict on the built-in data.
set -euo pipefail
OUT=${1:-runs/quickstart}
SAMPLES="$OUT/samples"

echo "== train (model-a on mnist-mini) -> $OUT" >&2
cnnctl train --recipe quickstart --out "$OUT" --overwrite

echo "== eval: refuse to ship below 97% on the 2,000 held-out test digits" >&2
cnnctl eval "$OUT" --min-accuracy 0.97

echo "== export to ONNX (verified against PyTorch in onnxruntime)" >&2
cnnctl export "$OUT"

echo "== predict: 10 PNG digits written from the test split" >&2
python3 - "$SAMPLES" <<'PY'
import sys
from pathlib import Path
from PIL import Image
from cnnctl.data.sources import mnist_mini
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
test = mnist_mini().test
for i in range(10):
    Image.fromarray(test.x[i, 0].numpy(), "L").save(out / f"digit{i}-label{int(test.y[i])}.png")
PY
cnnctl predict "$OUT/model.onnx" "$SAMPLES" --top-k 2

echo "== artifacts" >&2
echo "checkpoint: $OUT/model.safetensors" >&2
echo "history:    $OUT/history.json" >&2
echo "config:     $OUT/config.json" >&2
echo "onnx:       $OUT/model.onnx" >&2
echo "samples:    $SAMPLES/" >&2
