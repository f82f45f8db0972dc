#!/usr/bin/env bash
# The quickstart: installs kerasbn into .venv, builds the embedded default dataset, trains the
# study's baseline and BN network on it, and prints how each did against the target accuracy.
# Rerunning it reuses the dataset and finished runs. Under 20 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/install_venv.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

# The flagfiles' --precision=auto trains in mixed_bfloat16 on CPUs with native bfloat16
# (AVX512-BF16 or AMX), which halves the step time, and in float32 elsewhere (where bfloat16
# would be emulated and slower); PRECISION=... overrides it.

DATA=data/quickstart
if [ ! -f "$DATA/manifest.json" ]; then
  # 20 people never trained on, with 10,000 matched and 10,000 mismatched pairs of them, so
  # verification's TAR at FAR 1e-3 rests on ten false accepts.
  .venv/bin/python -m data_tools.synth --out "$DATA" --holdout_identities 20 --pairs 10000
fi

for net in baseline bn; do
  echo "== training $net (launch/quickstart/$net.flags) =="
  .venv/bin/python -m kerasbn.train --flagfile="launch/quickstart/$net.flags" \
    --data_dir="$DATA" --run_dir="runs/quickstart/$net" ${PRECISION:+--precision="$PRECISION"}
done

echo "== quickstart summary =="
.venv/bin/python -m kerasbn.report runs/quickstart/baseline runs/quickstart/bn \
  --out=runs/quickstart/report
for net in baseline bn; do
  echo "$net: TensorBoard logs runs/quickstart/$net/tensorboard, SavedModel runs/quickstart/$net/export"
done
