#!/usr/bin/env bash
# Softmax, CosFace and ArcFace on the study's BN network, verified on identities never
# trained on (BENCHMARKS.md, "Margin heads"): launch/quickstart/bn.flags cut to 300
# iterations (the x0.1 step moves to 225), verified every 100. Same data, learning rate,
# iterations and precision (float32: the quickstart's auto would pick mixed_bfloat16 on a
# CPU with bfloat16 instructions and float32 elsewhere) for every head.
#   1. the margin sweep on seed 0 of the embedded default data (scale 30; cosface m 0.2 and
#      0.35, arcface m 0.3 and 0.5), softmax beside it;
#   2. each margin head at the margin with the best final verification accuracy on seed 0,
#      and softmax, on seed 1;
#   3. the three heads at those values on the AT&T faces (10 identities held out), seeds 0, 1.
# A finished run is kept, so rerunning trains only what is missing. ROOT, QUICK, ATT and
# PYTHON override where the runs, the two datasets and the Python with kerasbn are.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
PY=${PYTHON:-.venv/bin/python}
ROOT=${ROOT:-results/heads_quick}
QUICK=${QUICK:-data/quickstart}
ATT=${ATT:-data/att_holdout}
[ -f "$QUICK/manifest.json" ] ||
  $PY -m data_tools.synth --out "$QUICK" --holdout_identities 20 --pairs 10000
[ -f "$ATT/manifest.json" ] ||
  $PY -m data_tools.build_records "${KERASBN_ATT_FACES:-../shared/data/att_faces}" \
    --out "$ATT" --holdout_identities 10 --pairs 400

run() {  # run DATA RUN SEED [FLAGS...]: trains ROOT/RUN-seedSEED
  local data=$1 seed=$3 dir="$ROOT/$2-seed$3"
  shift 3
  if grep -qs '"finished": true' "$dir/summary.json"; then return; fi
  echo "== $dir $*"
  $PY -m kerasbn.train --flagfile=launch/quickstart/bn.flags --max_iter=300 \
    --precision=float32 --verify_interval=100 --data_dir="$data" --run_dir="$dir" \
    --seed="$seed" "$@" |
    grep -E "^(test|verify) +iter 300"
}

run "$QUICK" softmax 0
for m in 0.2 0.35; do run "$QUICK" "cosface_s30_m$m" 0 --head=cosface --scale=30 --margin=$m; done
for m in 0.3 0.5; do run "$QUICK" "arcface_s30_m$m" 0 --head=arcface --scale=30 --margin=$m; done

best() {  # best HEAD: the margin whose seed-0 run ends with the highest verification accuracy
  $PY - "$ROOT" "$1" <<'EOF'
import glob, json, os, sys
root, head = sys.argv[1:]
final = lambda d: [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))][-1]
runs = glob.glob(os.path.join(root, f"{head}_s30_m*-seed0"))
best = max(runs, key=lambda d: (final(d)["verify_acc"], final(d)["verify_auc"]))
print(os.path.basename(best)[len(head) + len("_s30_m"):-len("-seed0")])
EOF
}
cosface=$(best cosface)
arcface=$(best arcface)
echo "chosen on seed 0: cosface margin $cosface, arcface margin $arcface (scale 30)"
cosface_run="cosface_s30_m$cosface" arcface_run="arcface_s30_m$arcface"
run "$QUICK" softmax 1
run "$QUICK" "$cosface_run" 1 --head=cosface --scale=30 --margin="$cosface"
run "$QUICK" "$arcface_run" 1 --head=arcface --scale=30 --margin="$arcface"
for seed in 0 1; do
  run "$ATT" att/softmax $seed
  run "$ATT" "att/$cosface_run" $seed --head=cosface --scale=30 --margin="$cosface"
  run "$ATT" "att/$arcface_run" $seed --head=arcface --scale=30 --margin="$arcface"
done
for set in "" att/; do
  $PY -m kerasbn.report "$ROOT/${set}"softmax-seed[01] "$ROOT/$set$cosface_run"-seed[01] \
    "$ROOT/$set$arcface_run"-seed[01] --out="$ROOT/${set}report"
done
