"""Time per training iteration: nnUNetTrainer vs semi-supervised trainers, side by side in one run.

    python benchmarks/step_time.py                                   # bundled HC18 demo subset, 2d
    python benchmarks/step_time.py --hippocampus $DATA/Hippocampus_MSD_Task04   # adds 3d_fullres
    python benchmarks/step_time.py -device cuda --trainers nnUNetTrainer MeanTeacherTrainer

Each trainer is set up on the same preprocessed data and plans; a few batches are drawn once and cached, so the
timing is the update step alone (forward, backward, optimizer, EMA): data augmentation runs in background workers
in real training and is left out. Rounds alternate between the trainers so both see the same machine load.
Prints the median seconds per iteration and the ratio to nnUNetTrainer (Mean Teacher: about 2x expected, one
teacher forward and one student forward/backward on unlabeled data on top of the labeled step).
"""
import argparse
import itertools
import os
import statistics
import tempfile
import time

import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json


def make_trainer(name: str, dataset_name: str, configuration: str, device: str):
    from nnunetv2.paths import nnUNet_preprocessed
    from semi_nnunet.trainers.lookup import find_trainer_class
    pre = join(str(nnUNet_preprocessed), dataset_name)
    plans = {**load_json(join(pre, "nnUNetPlans.json")), "continue_training": False}
    trainer = find_trainer_class(name)(plans, configuration, 0, load_json(join(pre, "dataset.json")),
                                       torch.device(device))
    trainer.on_train_start()
    trainer.network.train()
    labeled = [next(trainer.dataloader_train) for _ in range(3)]
    if getattr(trainer, "dataloader_unlabeled", None) is not None:
        trainer.dataloader_unlabeled = itertools.cycle([next(trainer.dataloader_unlabeled) for _ in range(3)])
    return trainer, itertools.cycle(labeled)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_trainers(names, dataset_name: str, configuration: str, device: str, iters: int, rounds: int) -> dict:
    trainers = {n: make_trainer(n, dataset_name, configuration, device) for n in names}
    for trainer, batches in trainers.values():  # warm-up
        for _ in range(2):
            trainer.train_step(next(batches))
    times = {n: [] for n in names}
    for _ in range(rounds):
        for n, (trainer, batches) in trainers.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(iters):
                trainer.train_step(next(batches))
            sync(device)
            times[n].append((time.perf_counter() - t) / iters)
    return {n: statistics.median(v) for n, v in times.items()}


def prepare_datasets(hippocampus=None, workdir=None):
    """The bundled demo subset (2d) and, given its folder, MSD Hippocampus (3d_fullres), planned and preprocessed in
    ``workdir`` (a temporary folder by default). Returns ``[(dataset_name, configuration), ...]``."""
    os.environ["nnUNet_n_proc_DA"] = "0"
    workdir = workdir or tempfile.mkdtemp(prefix="semi_nnunet_bench_")
    from semi_nnunet.dataset_conversion.synthetic import set_nnunet_paths
    from semi_nnunet.demo_api import DEMO_DATASET_ID, DEMO_DATASET_NAME, convert_demo_data
    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    paths = set_nnunet_paths(workdir)
    convert_demo_data(paths["nnUNet_raw"])
    plan_and_preprocess(DEMO_DATASET_ID, ["2d"], num_processes=1, show_progress=False)  # skips what is done
    cases = [(f"Dataset{DEMO_DATASET_ID}_{DEMO_DATASET_NAME}", "2d")]
    if hippocampus:
        from semi_nnunet.dataset_conversion.msd_hippocampus import convert_msd_hippocampus
        if not os.path.isdir(join(paths["nnUNet_raw"], "Dataset803_Hippocampus")):
            convert_msd_hippocampus(hippocampus, 803, 20, 20, 0, output_root=paths["nnUNet_raw"], verbose=False)
        plan_and_preprocess(803, ["3d_fullres"], num_processes=1, show_progress=False)
        cases.append(("Dataset803_Hippocampus", "3d_fullres"))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainer", "MeanTeacherTrainer"])
    parser.add_argument("--hippocampus", help="MSD Task04 folder: also time 3d_fullres on it")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    rows = []
    for dataset_name, configuration in prepare_datasets(args.hippocampus, args.workdir):
        result = time_trainers(args.trainers, dataset_name, configuration, args.device, args.iters, args.rounds)
        base = result[args.trainers[0]]
        rows += [(dataset_name, configuration, n, s, s / base) for n, s in result.items()]
    print(f"\n| dataset | config | trainer | s / iteration | ratio vs {args.trainers[0]} |")
    print("|---|---|---|---|---|")
    for d, c, n, s, r in rows:
        print(f"| {d} | {c} | {n} | {s:.3f} | {r:.2f} |")
    print(f"\ndevice {args.device}; {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}; "
          f"{args.rounds} rounds x {args.iters} iterations, median")


if __name__ == "__main__":
    main()
