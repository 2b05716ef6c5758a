"""Preprocessing time per unlabeled case vs per labeled case, nnU-Net's preprocessor, measured in one run.

    python benchmarks/preprocess_time.py --hc18 $DATA/HC18/training_set \
        --hippocampus $DATA/Hippocampus_MSD_Task04 --workdir /tmp/bench_pp

Converts each dataset (seeded split), plans it with nnU-Net's planner, then preprocesses the labeled and the
unlabeled cases with the same plans, single process, alternating rounds (labeled, unlabeled, labeled, ...) so that
both see the same machine load. Prints seconds per case and the ratio unlabeled / labeled (expect about 1: an
unlabeled case skips the label read and the foreground sampling, nothing else).
"""
import argparse
import os
import shutil
import statistics
import time

from batchgenerators.utilities.file_and_folder_operations import join, load_json


def time_dataset(dataset_id: int, configuration: str, rounds: int) -> dict:
    from semi_nnunet.planners.plan_and_preprocess_api import find_dataset_name, plan_and_preprocess
    from semi_nnunet.planners.preprocessing import preprocess_cases
    from semi_nnunet.utilities.raw_dataset import check_semi_dataset
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    name = find_dataset_name(dataset_id)
    plan_and_preprocess(dataset_id, [configuration], num_processes=1, preprocess=False, show_progress=False)
    ds = check_semi_dataset(join(str(nnUNet_raw), name))
    pre = join(str(nnUNet_preprocessed), name)
    plans, dataset_json = load_json(join(pre, "nnUNetPlans.json")), load_json(join(pre, "dataset.json"))
    sets = {"labeled": {k: (ds.labeled[k], ds.labels[k]) for k in ds.labeled},
            "unlabeled": {k: (v, None) for k, v in ds.unlabeled.items()}}
    per_case = {k: [] for k in sets}
    for _ in range(rounds):
        for kind, cases in sets.items():
            out = join(pre, f"bench_{kind}")
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(join(pre, ".semi_nnunet"), ignore_errors=True)
            t = time.perf_counter()
            preprocess_cases(cases, out, plans, configuration, dataset_json, 1, kind, show_progress=False)
            per_case[kind].append((time.perf_counter() - t) / len(cases))
    lab, unl = statistics.median(per_case["labeled"]), statistics.median(per_case["unlabeled"])
    return {"dataset": name, "configuration": configuration, "n_labeled": len(ds.labeled),
            "n_unlabeled": len(ds.unlabeled), "s_per_labeled": lab, "s_per_unlabeled": unl, "ratio": unl / lab}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hc18", help="HC18 training_set folder")
    parser.add_argument("--hippocampus", help="MSD Task04 Hippocampus folder (images/, masks/)")
    parser.add_argument("--workdir", default="/tmp/semi_nnunet_bench_pp")
    parser.add_argument("--num-labeled", type=int, default=40)
    parser.add_argument("--num-unlabeled", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from semi_nnunet.dataset_conversion.synthetic import set_nnunet_paths
    shutil.rmtree(args.workdir, ignore_errors=True)
    paths = set_nnunet_paths(args.workdir)
    rows = []
    if args.hc18:
        from semi_nnunet.dataset_conversion.hc18 import convert_hc18
        convert_hc18(args.hc18, 801, args.num_labeled, args.num_unlabeled, 0, output_root=paths["nnUNet_raw"],
                     verbose=False)
        rows.append(time_dataset(801, "2d", args.rounds))
    if args.hippocampus:
        from semi_nnunet.dataset_conversion.msd_hippocampus import convert_msd_hippocampus
        convert_msd_hippocampus(args.hippocampus, 802, args.num_labeled, args.num_unlabeled, 0,
                                output_root=paths["nnUNet_raw"], verbose=False)
        rows.append(time_dataset(802, "3d_fullres", args.rounds))
    print("\n| dataset | config | labeled / unlabeled cases | s per labeled case | s per unlabeled case | "
          "ratio unlabeled / labeled |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['configuration']} | {r['n_labeled']} / {r['n_unlabeled']} | "
              f"{r['s_per_labeled']:.4f} | {r['s_per_unlabeled']:.4f} | {r['ratio']:.2f} |")
    print(f"\nmachine: {os.cpu_count()} CPUs; rounds: {args.rounds} (median per case)")


if __name__ == "__main__":
    main()
