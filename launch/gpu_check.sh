#!/usr/bin/env bash
# What a GPU machine gives kerasbn, in a few minutes: the devices TensorFlow sees, then the
# study's BN network (Keras BN, 14,700 classes, batch 128) in mixed_float16 training from the
# real input pipeline and from one cached batch of it in the same run, with and without XLA
# (images/s and whether the step is input-bound), with PyTorch installed the baseline and BN
# networks against the same in PyTorch (AMP, channels-last) on the GPU, the field's
# IResNet-50 and MobileFaceNet at 112x112 the same way (kerasbn alone without PyTorch),
# their FLOPs per image beside the rates, the margin head's centres at 1M classes on every GPU
# replicated against sharded (--shard_classes), then a short real
# training run end to end with NVIDIA Caffe's BN (dynamic loss scaling, the loss scale on its
# display lines).
#   launch/gpu_check.sh                       # after: pip install -e ".[and-cuda]"
#   STEPS=300 PRECISION=mixed_bfloat16 launch/gpu_check.sh
# Its lines go into BENCHMARKS.md ("GPU check") with the GPU's name.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${DATA:-data/gpu_check}
RUN=${RUN:-runs/gpu_check}
STEPS=${STEPS:-200}
CLASSES=${CLASSES:-14700}
SHARD_CLASSES=${SHARD_CLASSES:-1000000}
BATCH=${BATCH:-128}
COMPILE=${COMPILE:-plain,xla}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

"$PYTHON" -c "import kerasbn, tensorflow as tf
gpus = tf.config.list_physical_devices('GPU')
names = [tf.config.experimental.get_device_details(g).get('device_name', g.name) for g in gpus]
print('devices:', ', '.join(names) if names else 'no GPU: this check measures the CPU')"
# Without a GPU, float16 runs emulated (minutes per step for this network on a 2-core CPU):
# the CPU's own fastest precision is measured instead unless PRECISION says otherwise.
PRECISION=${PRECISION:-$("$PYTHON" -c "import kerasbn.training.runtime as t; print(t.auto_precision())")}
echo "precision: $PRECISION"
if [ ! -f "$DATA/manifest.json" ]; then
  # 200 identities x 60 images of the synthetic faces: 9,000 training records, enough for
  # the shuffle and interleave to run as in a real run.
  "$PYTHON" -m data_tools.synth --out "$DATA" --identities 200 --images_per_identity 60
fi
echo "== the BN network's step: one cached batch against the real input pipeline =="
"$PYTHON" -m kerasbn.bench --bench=train --model=bn --num_classes="$CLASSES" \
  --batch_size="$BATCH" --batches="$STEPS" --repeats=2 --precisions="$PRECISION" \
  --compile="$COMPILE" --data_dir="$DATA"
if [ "$PRECISION" = mixed_float16 ] && "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "== the baseline and BN networks against PyTorch's (AMP, channels-last) on this GPU =="
  "$PYTHON" -m kerasbn.bench --bench=peer --precisions=float32,mixed_float16 \
    --num_classes="$CLASSES" --batch_size="$BATCH" --batches="$STEPS" --repeats=2
fi
if [ "$PRECISION" = mixed_float16 ]; then
  echo "== IResNet-50 and MobileFaceNet at 112x112, $PRECISION, against PyTorch's where installed =="
  "$PYTHON" -m kerasbn.bench --bench=peer --networks=iresnet50,mobilefacenet \
    --precisions="$PRECISION" --num_classes="$CLASSES" --batch_size="$BATCH" \
    --batches="$STEPS" --repeats=2
fi
GPUS=$("$PYTHON" -c "import kerasbn, tensorflow as tf
print(max(1, len(tf.config.list_physical_devices('GPU'))))")
echo "== $SHARD_CLASSES classes, 512-d, on $GPUS device(s): the centres replicated against sharded =="
"$PYTHON" -m kerasbn.bench --bench=shard --class_counts="$SHARD_CLASSES" --replicas="$GPUS" \
  --sample_fractions=0.1 --batch_size="$BATCH" --batches="$STEPS" --repeats=1 \
  --precisions="$PRECISION"
echo "== a real training run: $STEPS iterations, $PRECISION =="
"$PYTHON" -m kerasbn.train --data_dir="$DATA" --run_dir="$RUN" --overwrite --model=bn \
  --norm=nvidia --bn_momentum=0.9 --batch_size="$BATCH" --precision="$PRECISION" \
  --max_iter="$STEPS" --test_interval="$STEPS" --display=$((STEPS / 4 > 0 ? STEPS / 4 : 1)) \
  --snapshot=0 --verify_split=none --test_initialization=false
