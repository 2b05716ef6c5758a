#!/usr/bin/env bash
# The converged, multi-seed label-efficiency grids recorded in documentation/benchmarks.md (issue: a benchmark that
# can be trusted). Resumable: rerun the same script and only unfinished jobs run. Usage:
#   DATA=/path/to/data WORK=/path/with/space bash benchmarks/label_efficiency_grids.sh [hc18|hc18_new|hc18_b160_base|hc18_b160_first|hc18_b160_um0|hc18_b160_sc0|hc18_b160_n20base|hc18_b160_n20|hc18_b160_schco|hc18_b160|hc18_b160_more|hc18_b160_mt|hc18_b160_hermes|hc18_b160_hermeshco|hc18_b160_um|hc18_b160_scb|hippo_base|hippo_sc|hippo_st|hippo_scsoft|hippo_mt|hippo|hc18_demo_budget|hc18_demo_budget_hermes|hc18_demo_budget_hermeshco|save] ...
# Each grid is run by two workers (the same command started twice, each on its own core with one thread; a job's
# lock file hands every job to one of them). Finished jobs' result files are kept in the repository
# (documentation/benchmarks/<grid>/jobs/) and copied back into WORK first, so a fresh machine resumes the grid
# from them: `save` copies WORK's finished jobs into the repository.
set -euo pipefail
: "${DATA:?set DATA to the folder holding HC18/ and Hippocampus_MSD_Task04/}" "${WORK:?set WORK}"
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}  # REPO=...: a copy of this script run elsewhere
# Every job of a grid runs the same code: the commit the grid started with (methods change under later issues), in a
# worktree on PYTHONPATH, which comes before the editable install (console scripts do not put the cwd on sys.path).
code() {  # code COMMIT: the worktree of that commit, made once
    local dir=$WORK/code_$1
    [ -d "$dir" ] || git -C "$REPO" worktree add --detach "$dir" "$1" > /dev/null
    echo "$dir"
}
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/pre nnUNet_results=$WORK/res
export nnUNet_n_proc_DA=0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$WORK"
[ -d "$nnUNet_raw/Dataset832_HC18S64" ] || semi_nnUNet_convert_hc18 -i "$DATA/HC18/training_set" -d 832 -n HC18S64 \
    --num-labeled 100 --num-unlabeled 200 --num-test 100 --max-size 64
[ -d "$nnUNet_raw/Dataset840_HippoB" ] || semi_nnUNet_convert_msd_hippocampus -i "$DATA/Hippocampus_MSD_Task04" \
    -d 840 -n HippoB --num-labeled 40 --num-unlabeled 120 --num-test 50

jobs_copy() {  # jobs_copy FROM TO: every <subset>/seed<t>/jobs/*.json under FROM, into the same place under TO
    (cd "$1" && find . -path '*/seed*/jobs/*.json' -print0) | while IFS= read -r -d '' f; do
        [ -f "$2/$f" ] || { mkdir -p "$2/$(dirname "$f")" && cp -p "$1/$f" "$2/$f"; }
    done
}

grid() {  # grid NAME COMMIT ARGS...: restore, then two workers on that commit's code, then save
    local name=$1 commit=$2; shift 2
    local pythonpath; pythonpath=$(code "$commit")
    local kept="$REPO/documentation/benchmarks/$name/jobs"
    mkdir -p "$WORK/$name"
    [ -d "$kept" ] && jobs_copy "$kept" "$WORK/$name"
    # CORE=k: one worker on core k in the foreground (a core freed by the other worker's last job starts the next
    # grid at once); default: two workers, one per core
    # THREADS=t: one worker with t threads on every core instead (a job too long for one core within a session; its
    # time per iteration is then not comparable to jobs run on one core)
    if [ -n "${THREADS:-}" ]; then
        PYTHONPATH=$pythonpath OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS semi_nnUNet_benchmark "$@" \
            -o "$WORK/$name" -device cpu -np 1 > "$WORK/$name.threads$THREADS.log" 2>&1 &
    else for core in ${CORE:-0 1}; do
        PYTHONPATH=$pythonpath taskset -c $core semi_nnUNet_benchmark "$@" -o "$WORK/$name" -device cpu -np 1 \
            > "$WORK/$name.worker$core.log" 2>&1 &
        [ -n "${CORE:-}" ] || sleep 120  # the first worker plans and preprocesses; the second waits on their lock
    done; fi
    wait
    jobs_copy "$WORK/$name" "$kept"
}

# save: the finished jobs into the repository, and the report rewritten there from them with the repository's code
# (the workers ran an older commit's report code; rewrite_report changes no number, only the report's form), over
# training seeds 0-2 whatever the last command's --repeats was
save() { for name in hc18_grid hc18_b160 hc18_n20_grid hippo_grid hc18_demo_budget; do
    [ -d "$WORK/$name" ] && mkdir -p "$REPO/documentation/benchmarks/$name/jobs" \
        && jobs_copy "$WORK/$name" "$REPO/documentation/benchmarks/$name/jobs"
    [ -f "$WORK/$name/results.json" ] && cp "$WORK/$name"/results.json "$REPO/documentation/benchmarks/$name/"
    # no machine path in a committed record: WORK's raw datasets as $nnUNet_raw, its folders relative
    [ -d "$REPO/documentation/benchmarks/$name" ] && find "$REPO/documentation/benchmarks/$name" -name '*.json' \
        -exec sed -i "s#$WORK/raw/#\$nnUNet_raw/#g; s#$WORK/##g" {} +
    [ -f "$WORK/$name/results.json" ] \
        && (cd "$REPO" && PYTHONPATH=$REPO python -c "import sys; from semi_nnunet.benchmarking.label_efficiency \
import rewrite_report; rewrite_report(sys.argv[1], sys.argv[1] + '/jobs', 3)" "documentation/benchmarks/$name")
    done
    # the demo prints the headline grid's summary and the one at its own budget, which must equal their results.json
    # (tests/test_demo.py)
    (cd "$REPO" && PYTHONPATH=$REPO python -c "from batchgenerators.utilities.file_and_folder_operations import \
load_json; from semi_nnunet.benchmarking.report import write_summary; from semi_nnunet.demo_api import \
BENCHMARK_SUMMARY, DEMO_BUDGET_SUMMARY
for S, src in ((BENCHMARK_SUMMARY, None), (DEMO_BUDGET_SUMMARY, 'documentation/benchmarks/hc18_demo_budget/results.json')):
    src = src or load_json(S)['source']; write_summary(src, S, src)"); }

for what in "${@:-hc18}"; do case $what in
    # the methods of 2026-12-02 (Mean Teacher with EMA 0.99 on any budget, HCO, Semi-CervixSeg, Hermes)
    hc18) grid hc18_grid d68d24c -d 832 -c 2d --labeled 5 all \
        -tr MeanTeacherTrainer MeanTeacherTrainer_HCO SemiCervixTrainer HermesTrainer --no-hco --stages 1 \
        --epochs 80 --iterations 50 --repeats 3 ;;
    # the methods of issue 17 on the same subsets and baseline jobs (nnUNetTrainer's code is the same at both commits)
    # MeanTeacherTrainer_lrx1p6: the base optimizer at HCO's measured step (benchmarks/hco_step_size.py), the control
    # that tells HCO's gating from its larger step
    hc18_new) grid hc18_grid 038ece8 -d 832 -c 2d --labeled 5 all \
        -tr UniMatchTrainer SelfTrainingTrainer SelfTrainingTrainer_conf90 MeanTeacherTrainer_lrx1p6 \
        SemiCervixTrainer_uniform FixMatchTrainer --no-hco --stages 1 \
        --epochs 80 --iterations 50 --repeats 3 ;;
    # twice the budget (8000 iterations), because the baseline failed the convergence rule at 4000: the baseline
    # alone first (6 jobs), then the three methods ahead at 4000 and UniMatch, then the rest, all into one folder so
    # every call shares the baseline jobs (code 03d1c94: budget-aware EMA, UniMatch, self-training)
    hc18_b160_base) grid hc18_b160 03d1c94 -d 832 -c 2d --labeled 5 all -tr \
        --epochs 160 --iterations 50 --repeats 3 ;;
    # after seed 0 of the methods: Semi-CervixSeg with uniform sampling (ahead the most) and MT_HCO first
    hc18_b160_first) grid hc18_b160 03d1c94 -d 832 -c 2d --labeled 5 all \
        -tr SemiCervixTrainer_uniform MeanTeacherTrainer_HCO --no-hco --stages 1 \
        --epochs 160 --iterations 50 --repeats 3 ;;
    hc18_b160) grid hc18_b160 12c7689 -d 832 -c 2d --labeled 5 all \
        -tr UniMatchTrainer HermesTrainer SemiCervixTrainer --no-hco --stages 1 \
        --epochs 160 --iterations 50 --repeats 3 ;;
    # From here on the code is 12c7689 = 03d1c94 (the same methods) + progress.png drawn in 8-bit (about 5 s less per
    # epoch end on this CPU; nothing a training computes changes). Seed 0 of UniMatch and Hermes first, the
    # 20-labels baseline, then the two best methods at 20 labels and HCO on the best method
    hc18_b160_um0) grid hc18_b160 12c7689 -d 832 -c 2d --labeled 5 all \
        -tr UniMatchTrainer HermesTrainer --no-hco --stages 1 \
        --epochs 160 --iterations 50 --repeats 1 ;;
    # Semi-CervixSeg with the 1:1 stage batches (pseudo_sampling "balanced", today's default) seed 0 first: against
    # the uniform variant's seed 0 it decides the default (issue 17)
    hc18_b160_sc0) grid hc18_b160 12c7689 -d 832 -c 2d --labeled 5 all \
        -tr SemiCervixTrainer --no-hco --stages 1 --epochs 160 --iterations 50 --repeats 1 ;;
    hc18_b160_n20base) grid hc18_b160 12c7689 -d 832 -c 2d --labeled 5 20 all -tr \
        --epochs 160 --iterations 50 --repeats 3 ;;
    # the two best methods at 5 labels with more than one seed (Semi-CervixSeg uniform: 3 seeds, Hermes: 2 when this
    # was chosen, 2026-12-04; Mean Teacher + HCO, chosen before Hermes's seeds, is 0.6 points behind both)
    hc18_b160_n20) grid hc18_b160 12c7689 -d 832 -c 2d --labeled 5 20 all \
        -tr SemiCervixTrainer_uniform HermesTrainer --no-hco --stages 1 \
        --epochs 160 --iterations 50 --repeats 3 ;;
    # HCO on the best method: Semi-CervixSeg with its default 1:1 batches (HCO refuses the uniform sampling, whose
    # batches mostly hold no labeled patch to trust); compared with SemiCervixTrainer's own seeds (hc18_b160_scb)
    hc18_b160_schco) grid hc18_b160 12c7689 -d 832 -c 2d --labeled 5 all \
        -tr SemiCervixTrainer_HCO --no-hco --stages 1 \
        --epochs 160 --iterations 50 --repeats 3 ;;
    # the other seeds of the one-seed rows, one method per entry so that a core runs what fits the session's time
    # left (one job at this budget on one core: Mean Teacher about 25 min, Hermes 50, UniMatch 55, Semi-CervixSeg 80)
    hc18_b160_mt) grid hc18_b160 12c7689 -d 832 -c 2d --labeled 5 all -tr MeanTeacherTrainer --no-hco \
        --epochs 160 --iterations 50 --repeats 3 ;;
    hc18_b160_hermes) grid hc18_b160 12c7689 -d 832 -c 2d --labeled 5 all -tr HermesTrainer --no-hco \
        --epochs 160 --iterations 50 --repeats 3 ;;
    # HCO on the best method of the 3-seed rows: Hermes (0.69 of the gap, ahead in 3 of 3, 2026-12-05), on the code
    # of its own seeds (12c7689), so the pair differs only in the optimizer
    hc18_b160_hermeshco) grid hc18_b160 12c7689 -d 832 -c 2d --labeled 5 all -tr HermesTrainer_HCO --no-hco \
        --epochs 160 --iterations 50 --repeats 3 ;;
    hc18_b160_um) grid hc18_b160 12c7689 -d 832 -c 2d --labeled 5 all -tr UniMatchTrainer --no-hco \
        --epochs 160 --iterations 50 --repeats 3 ;;
    hc18_b160_scb) grid hc18_b160 12c7689 -d 832 -c 2d --labeled 5 all -tr SemiCervixTrainer --no-hco --stages 1 \
        --epochs 160 --iterations 50 --repeats 3 ;;
    hc18_b160_more) grid hc18_b160 03d1c94 -d 832 -c 2d --labeled 5 all \
        -tr SelfTrainingTrainer_conf90 MeanTeacherTrainer_HCO MeanTeacherTrainer MeanTeacherTrainer_lrx1p6 \
        SelfTrainingTrainer SemiCervixTrainer_uniform --no-hco --stages 1 \
        --epochs 160 --iterations 50 --repeats 3 ;;
    # 3D: one worker on core 1 (CORE=1), the methods' code of the HC18 8000-iteration grid (12c7689); 600 iterations,
    # because one 3D step costs 3.1 s (baseline) and 7.1 s (Mean Teacher) on one core of this CPU: baseline and Mean
    # Teacher of one seed fit a session; Semi-CervixSeg uniform is the 2D winner (issue 17)
    # the 3D baseline's seeds 1-2 alone (about 40 minutes of one core each): jobs that fit one session, where the
    # Semi-CervixSeg job (stage 0 and stage 1, about 2 h 50 min of one core) does not
    hippo_base) grid hippo_grid 12c7689 -d 840 -c 3d_fullres --labeled 10 -tr --epochs 12 --iterations 50 --repeats 3 ;;
    # Semi-CervixSeg's 3D seed 0 alone with both cores' threads (run with nothing else on the machine): 2 h 50 min on
    # one core does not fit a session
    hippo_sc) THREADS=${THREADS:-2} grid hippo_grid 12c7689 -d 840 -c 3d_fullres --labeled 10 \
        -tr SemiCervixTrainer_uniform --no-hco --stages 1 --epochs 12 --iterations 50 --repeats 1 ;;
    # after Semi-CervixSeg's 3D failure (stage 0's pseudo-labels 0.73 / 0.28 Dice): self-training, whose stage 0 is
    # the baseline (about 1 h of one core), and Semi-CervixSeg with softmax consistency and 1:1 stage batches (both
    # cores' threads, as hippo_sc)
    hippo_st) grid hippo_grid 12c7689 -d 840 -c 3d_fullres --labeled 10 \
        -tr SelfTrainingTrainer --no-hco --stages 1 --epochs 12 --iterations 50 --repeats 1 ;;
    hippo_scsoft) THREADS=${THREADS:-2} grid hippo_grid 12c7689 -d 840 -c 3d_fullres --labeled 10 \
        -tr SemiCervixTrainer_softmax --no-hco --stages 1 --epochs 12 --iterations 50 --repeats 1 ;;
    # Mean Teacher's 3D seeds 1-2 (about 70 min of one core each), beside the baseline's 3 seeds
    hippo_mt) grid hippo_grid 12c7689 -d 840 -c 3d_fullres --labeled 10 -tr MeanTeacherTrainer --no-hco \
        --epochs 12 --iterations 50 --repeats 3 ;;
    hippo) grid hippo_grid 12c7689 -d 840 -c 3d_fullres --labeled 10 \
        -tr MeanTeacherTrainer SemiCervixTrainer_uniform --no-hco --stages 1 \
        --epochs 12 --iterations 50 --repeats 3 ;;
    # the demo's budget (issue 17: the demo trains the best method at a budget where it is ahead): the best method
    # (Semi-CervixSeg, uniform sampling, one stage) against the baseline at 1000 iterations per training, 3 seeds, on
    # the same 64 px subsets (code a28f4f9, the demo's)
    hc18_demo_budget) grid hc18_demo_budget a28f4f9 -d 832 -c 2d --labeled 5 \
        -tr SemiCervixTrainer_uniform --no-hco --stages 1 --epochs 20 --iterations 50 --repeats 3 ;;
    # Hermes at the demo's budget: the demo's method since Hermes's 3 seeds at 8000 iterations put it first (the demo
    # follows the converged benchmark's best row); the baseline jobs are the entry above's (same nnUNetTrainer code)
    hc18_demo_budget_hermes) grid hc18_demo_budget 12c7689 -d 832 -c 2d --labeled 5 \
        -tr HermesTrainer --no-hco --epochs 20 --iterations 50 --repeats 3 ;;
    # HCO on Hermes at the demo's budget: the demo trains the converged grid's best row, which HCO on Hermes may be
    hc18_demo_budget_hermeshco) grid hc18_demo_budget 12c7689 -d 832 -c 2d --labeled 5 \
        -tr HermesTrainer_HCO --no-hco --epochs 20 --iterations 50 --repeats 3 ;;
    save) save ;;
    *) echo "unknown grid $what (hc18, hc18_new, hc18_b160_base, hc18_b160_first, hc18_b160_um0, hc18_b160_sc0, hc18_b160_n20base, hc18_b160_n20, hc18_b160_schco, hc18_b160, hc18_b160_more, hc18_b160_mt, hc18_b160_hermes, hc18_b160_hermeshco, hc18_b160_um, hc18_b160_scb, hippo_base, hippo_sc, hippo_st, hippo_scsoft, hippo_mt, hippo, hc18_demo_budget, hc18_demo_budget_hermes, hc18_demo_budget_hermeshco, save)"; exit 2 ;;
esac; done
