"""HCO overhead: time per iteration of one trainer with AdamW vs HCO-AdamW and SGD vs HCO-SGD, in one run.

    python benchmarks/hco_overhead.py --hippocampus $DATA/Hippocampus_MSD_Task04 [-device cuda]

Same trainer (Mean Teacher by default), same data, same cached batches; only the optimizer differs. Both sides run
the same split update (labeled backward, then unlabeled backward); HCO adds the pointer swap, its element-wise step
and one parameter-sized buffer. Goal: ratio at most 1.05 (the paper reports under 1.01 on a GPU).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_time import prepare_datasets, time_trainers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", default="MeanTeacherTrainer")
    parser.add_argument("--hippocampus", help="MSD Task04 folder: also time 3d_fullres on it")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", help="keep the preprocessed datasets here and reuse them (default: a new "
                                          "temporary folder)")
    parser.add_argument("--configurations", nargs="+", default=["2d", "3d_fullres"],
                        help="which of the prepared datasets to time (default: both)")
    args = parser.parse_args()
    pairs = [("sgd", "hco_sgd"), ("adamw", "hco_adamw")]
    names = [f"{args.trainer}_{o}" for pair in pairs for o in pair]
    rows = []
    for dataset_name, configuration in prepare_datasets(args.hippocampus, args.workdir):
        if configuration not in args.configurations:
            continue
        result = time_trainers(names, dataset_name, configuration, args.device, args.iters, args.rounds)
        for base, hco in pairs:
            b, h = result[f"{args.trainer}_{base}"], result[f"{args.trainer}_{hco}"]
            rows.append((dataset_name, configuration, base, b, hco, h, h / b))
    print("\n| dataset | config | base | s / it | HCO | s / it | ratio HCO / base |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]} | {r[5]:.3f} | {r[6]:.3f} |")
    print(f"\ndevice {args.device}; trainer {args.trainer}; {args.rounds} rounds x {args.iters} iterations, median")


if __name__ == "__main__":
    main()
