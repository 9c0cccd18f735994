#!/usr/bin/env bash
# The CUDA paths, run for real on a machine with an NVIDIA GPU (CI has none: these are skipped
# there). Runs from the repository root without installing cnnctl (PYTHONPATH), on the small
# data that travels with the repository. Prints one line per check; docs/gpu.md has the results.
#
#   bash scripts/gpu_check.sh [LOGDIR]
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CNNCTL_CACHE=${TMPDIR:-/tmp}/cnnctl-gpu-cache COLUMNS=160
W=$(mktemp -d)
PY=${PYTHON:-python3}
summary() {  # RUN -> "test acc, epochs, best img/s"
  $PY - "$1" <<'EOF'
import json, sys
h = json.load(open(sys.argv[1] + "/history.json"))
e = h["epochs"]
print(f"test_acc {h.get('test', {}).get('acc', float('nan')):.4f}  epochs {len(e)}  train img/s (last epoch) {e[-1]['images_per_s']:.0f}")
EOF
}
check() {  # NAME CMD...: run, print ok/FAIL with the time taken
  local name=$1; shift
  local t0=$(date +%s.%N)
  if "$@" > "$W/$name.out" 2> "$W/$name.err"; then
    printf 'ok    %-28s %6.1fs\n' "$name" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')"
  else
    printf 'FAIL  %-28s\n' "$name"; tail -5 "$W/$name.err"
  fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, torchvision, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', '| torchvision', torchvision.__version__, '| onnxruntime', ort.__version__, ort.get_available_providers())"

T="model-a --data mnist-mini --epochs 4 --batch-size 128 --scheduler onecycle --lr 3e-3"
check cpu          $PY -m cnnctl train $T --device cpu --out $W/cpu
check cuda-fp32    $PY -m cnnctl train $T --device cuda --out $W/fp32
check cuda-bf16    $PY -m cnnctl train $T --device cuda --amp bf16 --out $W/bf16
check cuda-fp16    $PY -m cnnctl train $T --device cuda --amp fp16 --out $W/fp16
check cuda-compile $PY -m cnnctl train $T --device cuda --amp bf16 --compile --out $W/compile
check cuda-det     $PY -m cnnctl train $T --device cuda --deterministic --out $W/det1
check cuda-det2    $PY -m cnnctl train $T --device cuda --deterministic --out $W/det2
check pytest-cuda  $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py

for r in cpu fp32 bf16 fp16 compile det1; do [ -f $W/$r/history.json ] && echo "  $r: $(summary $W/$r)"; done
$PY - "$W" <<'EOF'
import sys
from safetensors.torch import load_file
a, b = (load_file(f"{sys.argv[1]}/{r}/model.safetensors") for r in ("det1", "det2"))
print("  --deterministic twice on CUDA: weights bit-identical:", all(a[k].equal(b[k]) for k in a))
EOF
check folder-bf16  $PY -m cnnctl train fastnet-s --data tests/fixtures/cifar10-mini --device cuda --amp bf16 --epochs 8 --batch-size 50 --augment flip-crop --scheduler onecycle --lr 0.2 --optimizer sgd --nesterov --label-smoothing 0.2 --out $W/folder
[ -f $W/folder/history.json ] && echo "  folder (cifar10-mini, mapped cache, bf16): $(summary $W/folder)"
check resume-cuda  $PY -m cnnctl train --resume $W/fp32 --epochs 5
check eval-cuda    $PY -m cnnctl eval $W/bf16 --device cuda --json
check eval-cpu     $PY -m cnnctl eval $W/bf16 --device cpu --json
$PY - "$W" <<'EOF'
import json, sys
g, c = (json.load(open(f"{sys.argv[1]}/eval-{d}.out")) for d in ("cuda", "cpu"))
print(f"  eval of the bf16 run: cuda top1 {g['top1']:.4f} ({g['images_per_s']:.0f} img/s) vs cpu top1 {c['top1']:.4f} ({c['images_per_s']:.0f} img/s)")
EOF
check export       $PY -m cnnctl export $W/bf16 --json
check predict-cuda $PY -m cnnctl predict $W/bf16/model.onnx tests/fixtures/petimages-mini/Cat/0.jpg --provider cuda --json
check predict-auto $PY -m cnnctl predict $W/bf16/model.onnx tests/fixtures/petimages-mini/Cat/0.jpg --json
check torchrun-1gpu $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m cnnctl train $T --device cuda --amp bf16 --out $W/ddp
[ -f $W/ddp/history.json ] && echo "  torchrun (NCCL, 1 GPU): $(summary $W/ddp)"
for f in predict-cuda predict-auto; do echo "  $f: $(tail -c 300 $W/$f.err) $(head -c 200 $W/$f.out)"; done
[ -n "${1:-}" ] && tail -n 30 $W/*.err > "$1/stderr-tails.txt" 2>/dev/null
exit 0
