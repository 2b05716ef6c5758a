#!/usr/bin/env bash
# The converged, multi-seed label-efficiency grids recorded in documentation/benchmarks.md (issue: a benchmark that
# can be trusted). Resumable: rerun the same script and only unfinished jobs run. Usage:
#   DATA=../shared/data WORK=/path/with/space bash benchmarks/label_efficiency_grids.sh
# Each grid runs on its own core with one thread, so both progress side by side on a 2-core machine.
set -euo pipefail
: "${DATA:?set DATA to the folder holding HC18/ and Hippocampus_MSD_Task04/}" "${WORK:?set WORK}"
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/pre nnUNet_results=$WORK/res
export nnUNet_n_proc_DA=0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[ -d "$nnUNet_raw/Dataset832_HC18S64" ] || semi_nnUNet_convert_hc18 -i "$DATA/HC18/training_set" -d 832 -n HC18S64 \
    --num-labeled 100 --num-unlabeled 200 --num-test 100 --max-size 64
[ -d "$nnUNet_raw/Dataset840_HippoB" ] || semi_nnUNet_convert_msd_hippocampus -i "$DATA/Hippocampus_MSD_Task04" \
    -d 840 -n HippoB --num-labeled 40 --num-unlabeled 120 --num-test 50
taskset -c 0 semi_nnUNet_benchmark -d 832 -c 2d --labeled 5 all \
    -tr MeanTeacherTrainer MeanTeacherTrainer_HCO SemiCervixTrainer HermesTrainer --no-hco --stages 1 \
    --epochs 80 --iterations 50 --repeats 3 -o "$WORK/hc18_grid" -device cpu -np 2 > "$WORK/grid_hc18.log" 2>&1 &
taskset -c 1 semi_nnUNet_benchmark -d 840 -c 3d_fullres --labeled 10 -tr MeanTeacherTrainer --no-hco \
    --epochs 30 --iterations 50 --repeats 3 -o "$WORK/hippo_grid" -device cpu -np 1 > "$WORK/grid_hippo.log" 2>&1 &
wait
