#!/usr/bin/env bash
# The quickstart: installs kerasbn into .venv, builds the embedded default dataset, trains the
# study's baseline and BN network on it, and prints how each did against the target accuracy.
# Rerunning it reuses the dataset and finished runs. Under 20 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/install_venv.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

# bfloat16 halves the step time on CPUs with native bfloat16 (AVX512-BF16 or AMX);
# elsewhere it would be emulated and slower than float32.
if [ -n "${PRECISION:-}" ]; then :
elif grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then PRECISION=mixed_bfloat16
else PRECISION=float32; fi
echo "precision: $PRECISION"

DATA=data/quickstart
if [ ! -f "$DATA/manifest.json" ]; then
  # 20 people never trained on, with 10,000 matched and 10,000 mismatched pairs of them, so
  # verification's TAR at FAR 1e-3 rests on ten false accepts.
  .venv/bin/python -m data_tools.synth --out "$DATA" --holdout_identities 20 --pairs 10000
fi

for net in baseline bn; do
  echo "== training $net (launch/quickstart/$net.flags) =="
  .venv/bin/python -m kerasbn.train --flagfile="launch/quickstart/$net.flags" \
    --data_dir="$DATA" --run_dir="runs/quickstart/$net" --precision="$PRECISION"
done

echo "== quickstart summary =="
.venv/bin/python -m kerasbn.report runs/quickstart/baseline runs/quickstart/bn \
  --out=runs/quickstart/report
for net in baseline bn; do
  echo "$net: TensorBoard logs runs/quickstart/$net/tensorboard, SavedModel runs/quickstart/$net/export"
done
