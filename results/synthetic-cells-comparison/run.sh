#!/usr/bin/env bash
# First comparison of all methods on synthetic-cells: same budget, same seed, same
# network (the paper's U-Net shrunk to width 16 with 3x3 position convolutions so that it
# trains on a CPU). Writes its MLflow runs to ./mlflow.db and, with `benchbio report`,
# table.md/.csv/.tex and figure.png.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export MLFLOW_DISABLE_TELEMETRY=true
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$here/mlflow.db}
EPOCHS=${EPOCHS:-60}
SEEDS=${SEEDS:-0}
METHODS=${METHODS:-"harmonic harmonic-coordconv harmonic-noguide harmonic-random harmonic-low harmonic-high discriminative discriminative-sinconv embedseg patchperpix"}
for seed in $SEEDS; do
  for method in $METHODS; do
    extra=()
    [ "$method" = patchperpix ] && extra=(--set patch_size=11)  # 41 is BBBC010's size
    benchbio run --method "$method" --dataset synthetic-cells --experiment synthetic-cells-comparison \
      --epochs "$EPOCHS" --batch-size 16 --crop-size 64 --lr 3e-3 --seed "$seed" --val-every 20 \
      --set width=16 --set kernel_size=3 "${extra[@]}"
  done
done
benchbio report --experiment synthetic-cells-comparison --out "$here" --overwrite \
  --metrics sbd,abs_dic,fg_bg_dice,dsb_accuracy \
  --title "synthetic-cells: all methods, ${EPOCHS} epochs, seeds ${SEEDS}"
