#!/usr/bin/env bash
# An AT&T gallery (BENCHMARKS.md, "Galleries"): the study's BN network with ArcFace (s 30,
# m 0.3) trained 800 iterations on the embedded synthetic faces (the quickstart's data), the
# threshold chosen at FAR 1e-3 on that set's holdout pairs (20 synthetic people in neither
# set), AT&T people s1-s20 enrolled from their images 1-5, and every other AT&T image named:
# s1-s20's images 6-10 should get their own name, s21-s40's (never enrolled) "unknown".
# SEED picks the training seed; ROOT, QUICK, ATT_FACES and PYTHON override where things are.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
PY=${PYTHON:-.venv/bin/python}
SEED=${SEED:-0}
ROOT=${ROOT:-results/gallery_att}/seed$SEED
QUICK=${QUICK:-data/quickstart}
FACES=${ATT_FACES:-${KERASBN_ATT_FACES:-../shared/data/att_faces}}
[ -f "$QUICK/manifest.json" ] ||
  $PY -m data_tools.synth --out "$QUICK" --holdout_identities 20 --pairs 10000
RUN=$ROOT/run
if ! grep -qs '"finished": true' "$RUN/summary.json"; then
  $PY -m kerasbn.train --flagfile=launch/quickstart/bn.flags --precision=float32 \
    --head=arcface --scale=30 --margin=0.3 --data_dir="$QUICK" --run_dir="$RUN" \
    --seed="$SEED" | grep -E "^(test|verify) +iter 800"
fi
rm -rf "$ROOT/enrolled" "$ROOT/gallery"
for person in $(seq 1 20); do
  mkdir -p "$ROOT/enrolled/s$person"
  for image in 1 2 3 4 5; do
    cp "$FACES/s$person/$image.pgm" "$ROOT/enrolled/s$person/"
  done
done
$PY -m kerasbn.enroll --model="$RUN/export" --photos="$ROOT/enrolled" --out="$ROOT/gallery" \
  --far=1e-3 --data_dir="$QUICK"
probes=()
for person in $(seq 1 40); do
  first=$([ "$person" -le 20 ] && echo 6 || echo 1)
  for image in $(seq "$first" 10); do probes+=("$FACES/s$person/$image.pgm"); done
done
$PY -m kerasbn.predict --model="$RUN/export" --gallery="$ROOT/gallery" \
  --out="$ROOT/named.jsonl" "${probes[@]}" > /dev/null
$PY - "$ROOT/named.jsonl" <<'PY'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
person = lambda row: os.path.basename(os.path.dirname(row["face"]))
enrolled = [r for r in rows if int(person(r)[1:]) <= 20]
others = [r for r in rows if int(person(r)[1:]) > 20]
right = sum(r["identity"] == person(r) for r in enrolled)
wrong = sum(r["identity"] not in (person(r), "unknown") for r in enrolled)
rejected = sum(r["identity"] == "unknown" for r in others)
rank1 = sum(r["candidates"][0]["name"] == person(r) for r in enrolled)
print(f"enrolled people's other images ({len(enrolled)}): named right {right / len(enrolled):.3f}, "
      f"named as someone else {wrong / len(enrolled):.3f}, best candidate right "
      f"{rank1 / len(enrolled):.3f}; people never enrolled ({len(others)}): unknown "
      f"{rejected / len(others):.3f}")
PY
