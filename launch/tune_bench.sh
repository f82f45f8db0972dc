#!/usr/bin/env bash
# BENCHMARKS.md "Tuning against a grid": the grid over launch/tune/study_bench.yaml's choices
# (every point once, no pruner; each stops at the target or max_iter), then tune's TPE with
# successive halving on three seeds, each with a third of the grid's trials, compared with
# the grid (each seed's last line). DATA defaults to the embedded synthetic faces at 20 identities; AT&T faces:
#   DATA=data/att ROOT=runs/tune_bench_att launch/tune_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/tune20}
ROOT=${ROOT:-runs/tune_bench}
TRIALS=${TRIALS:-4}
PY=.venv/bin/python
[ -f "$DATA/manifest.json" ] || $PY -m data_tools.synth --out "$DATA" --identities 20
COMMON=(--space=launch/tune/study_bench.yaml --data_dir="$DATA" --max_iter=300
        --test_interval=25 --verify_interval=0 --precision=float32 --display=100
        --target=top1:0.8)
# Two processes share the grid's study (each takes the next point), as on two GPUs.
GRID=(--study_dir="$ROOT/grid" --sampler=grid --pruner=none --trials=12)
$PY -m kerasbn.tune "${COMMON[@]}" "${GRID[@]}" > "$ROOT.grid_a.log" 2>&1 &
sleep 5
$PY -m kerasbn.tune "${COMMON[@]}" "${GRID[@]}" > "$ROOT.grid_b.log" 2>&1
wait
tail -n 20 "$ROOT.grid_b.log"
for seed in 0 1 2; do
  $PY -m kerasbn.tune "${COMMON[@]}" --study_dir="$ROOT/tpe_seed$seed" --seed="$seed" \
      --trials="$TRIALS" --versus_grid="$ROOT/grid"
done
