#!/usr/bin/env bash
# Train every vlprop training method under one CPU budget, then evaluate it on DAVIS-2016 val-dev with
# the propagation settings of its paper. Two families per method:
#   r18   - the paper's ResNet-18 trunk from scratch (dul: resnet18, mast: mast_resnet18,
#           liir: liir_resnet18, stt: stt_resnet18 student + the shipped vlprop ResNet-18 as frozen teacher)
#   lite1 - EfficientNet-Lite1 from ImageNet, the trunk of the default model (needs the weight wheel),
#           BatchNorm statistics frozen (--freeze-bn); for stt the student is the Lite1 trunk (levels
#           stage1/stage4/stage6, RGB input, cosine correlations) and the ImageNet Lite1 the frozen teacher.
#
# Each run is evaluated with the protocol its method records (its paper's settings; MAST/LIIR on a Lite trunk
# propagate through their trained head, layer "embed"), and the lite1 runs also with the default's preset crw
# on the trunk layer, which compares the features alone with the untrained default.
#
# Budget: BUDGET of iteration time per run (default 2h; validation and checkpoints excluded), with --iters
# set from 3 calibration steps at the same settings so the lr schedules (and LIIR's stage switch at
# 30/35 of the run) fall inside the budget; --time-budget stops the run if the machine slows down. CPU deviations from the papers (crop, batch, bank size) are flags below;
# the paper values are in `vlprop train METHOD --help`.
#
# Usage: bash benchmarks/train_methods.sh [r18|lite1|all] [OUT_ROOT]     (from the repository root)
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

evaluate() {  # name tag [model args...]   (no args: the run's recorded protocol)
  local name=$1 tag=$2; shift 2
  $VLPROP eval vos --dataset davis2016 --root "$DAVIS" --split val-dev --out "$ROOT/$name/eval-$tag" \
      --weights "$ROOT/$name" --workers 2 "$@"
}

if [ "$FAMILY" = r18 ] || [ "$FAMILY" = all ]; then
  R="--init random"
  train dul-r18  dul  $R --batch 8 --frames 5 --gap 8 --crop 128 --lr 3e-4 --lr-schedule cosine --warmup 50
  train mast-r18 mast $R --batch 4 --crop 128
  train liir-r18 liir $R --batch 4 --crop 128 --bank-frames 96
  train stt-r18  stt  $R --batch 4 --crop 128 --teacher-weights default
  for name in dul-r18 mast-r18 liir-r18 stt-r18; do evaluate $name paper; done
fi

if [ "$FAMILY" = lite1 ] || [ "$FAMILY" = all ]; then
  L1="--arch efficientnet_lite1 --init imagenet --freeze-bn"
  train dul-lite1  dul  $L1 --batch 8 --frames 5 --gap 8 --crop 128 --scale-min 256 --scale-max 320 --lr 5e-5 \
      --lr-schedule cosine --warmup 20
  train mast-lite1 mast $L1 --batch 4 --crop 128 --lr 1e-4 --lr-schedule cosine --warmup 50
  train liir-lite1 liir $L1 --batch 4 --crop 128 --bank-frames 96 --lr 1e-4 --lr-schedule cosine --warmup 50
  train stt-lite1  stt  $L1 --batch 4 --crop 256 --lr 5e-5 --lr-schedule cosine --warmup 20
  for name in dul-lite1 mast-lite1 liir-lite1 stt-lite1; do
    evaluate $name paper
    evaluate $name crw --preset crw
  done
fi
