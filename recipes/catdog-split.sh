#!/usr/bin/env bash
# The cats-vs-dogs split every catdog script trains and scores on, leak-checked.
#   bash recipes/catdog-split.sh PETIMAGES_DIR DATA_OUT
# DATA_OUT/train: 3 in 5 photos by number (cnnctl's --val-split takes 10% of them to pick epochs and
# trials); DATA_OUT/test: the other 2 in 5, never used for training or selection. Links to the files;
# `cnnctl check --against` then drops the test photos that duplicate a training one (a leak would
# inflate the score), and a strict second check proves none is left.
set -euo pipefail
PETS=${1:?give the PetImages folder (Cat/, Dog/)}
DATA=${2:?give the folder to write train/ and test/ into}
rm -rf "$DATA"
for cls in Cat Dog; do
    mkdir -p "$DATA/train/$cls" "$DATA/test/$cls"
    for f in "$PETS/$cls"/*.jpg; do
        n=$(basename "$f" .jpg)
        if [ $((10#$n % 5)) -ge 3 ]; then side=test; else side=train; fi
        ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$DATA/$side/$cls/"
    done
done
CHECK=$(mktemp)
trap 'rm -f "$CHECK"' EXIT
cnnctl check "$DATA/train" --against "$DATA/test" --json > "$CHECK" || true
python - "$CHECK" "$DATA/test" <<'PY'
import json, os, sys
report, test = json.load(open(sys.argv[1])), os.path.abspath(sys.argv[2])
dropped = [m["path"] for g in report["duplicates"] if len(g["roots"]) > 1 for m in g["members"]
           if os.path.abspath(m["path"]).startswith(test + os.sep)]
for path in dropped:
    os.unlink(path)
print(f"dropped {len(dropped)} test photo(s) that duplicate training photos: {dropped}", file=sys.stderr)
PY
cnnctl check "$DATA/train" --against "$DATA/test" --strict > /dev/null
