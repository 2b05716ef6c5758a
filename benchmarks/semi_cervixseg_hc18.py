"""Semi-CervixSeg on HC18: supervised vs SemiCervixTrainer (stage 0) vs stage 1, same iteration budget; and
pseudo-label generation time vs stock nnUNetv2_predict on the same model and cases.

    python benchmarks/semi_cervixseg_hc18.py --hc18 $DATA/HC18/training_set

HC18 is converted with a seeded, patient-grouped split (few labeled, an unlabeled pool, a held-out labeled test set),
downsampled so the longer side is ``--max-size`` px (a CPU budget). Every trainer gets the demo's schedule
(``nnUNetTrainer_demo``, ``SemiCervixTrainer_demo`` and its stage 1; the runs recorded in documentation/benchmarks.md
used its earlier 8 epochs x 20 iterations), fold ``all``; the test images are predicted with nnU-Net's predictor and
scored with nnU-Net's evaluation (foreground Dice). Timing: the stage runner's pseudo-label step (preprocessed unlabeled
cases -> hard labels, no mirroring) against ``nnUNetv2_predict --disable_tta`` on the raw unlabeled images, same model
and fold, one process each, in one run.
"""
import argparse
import os
import shutil
import subprocess
import tempfile
import time

from batchgenerators.utilities.file_and_folder_operations import join


def _demo_budget() -> str:
    from semi_nnunet.trainers.variants import nnUNetTrainer_demo
    return "{num_epochs} epochs x {num_iterations_per_epoch} iterations".format(**nnUNetTrainer_demo.schedule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hc18", required=True)
    parser.add_argument("--num-labeled", type=int, default=20)
    parser.add_argument("--num-unlabeled", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--max-size", type=int, default=160)
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    workdir = args.workdir or tempfile.mkdtemp(prefix="semi_cervix_hc18_")
    from semi_nnunet.dataset_conversion.hc18 import convert_hc18
    from semi_nnunet.dataset_conversion.synthetic import set_nnunet_paths
    from semi_nnunet.demo_api import predict_and_evaluate
    from semi_nnunet.planners.plan_and_preprocess_api import get_unlabeled_folder, plan_and_preprocess
    from semi_nnunet.trainers.lookup import ext_trainer_path
    from semi_nnunet.train_api import train
    from semi_nnunet.stages.pseudo_labels import predict_pseudo_labels
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    paths = set_nnunet_paths(workdir)
    raw = convert_hc18(args.hc18, 811, args.num_labeled, args.num_unlabeled, args.num_test, seed=0,
                       max_size=args.max_size, output_root=paths["nnUNet_raw"], verbose=False)
    plan_and_preprocess(811, ["2d"], num_processes=2, show_progress=False)
    name = os.path.basename(raw)
    sup, cervix = "nnUNetTrainer_demo", "SemiCervixTrainer_demo"
    rows = []
    timings = {}
    for trainer, stages in ((sup, 0), (cervix, 1)):
        t = time.time()
        train(811, "2d", trainer, ["all"], device=args.device, stages=stages)
        timings[trainer] = time.time() - t
    for trainer in (sup, cervix, f"{cervix}_stage1"):
        model = get_output_folder(name, trainer, "nnUNetPlans", "2d")
        dice = predict_and_evaluate(model, join(raw, "imagesTs"), join(raw, "labelsTs"),
                                    join(workdir, "predictions", trainer), args.device)
        rows.append((trainer, dice))

    # pseudo-label step vs stock nnUNetv2_predict, same model (stage 0, fold all), same unlabeled cases
    model = get_output_folder(name, cervix, "nnUNetPlans", "2d")
    out = join(workdir, "timing_pseudo")
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    predict_pseudo_labels(model, ["all"], get_unlabeled_folder(name, "nnUNetPlans", "2d"), out, {"stage": 1},
                          device=args.device)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(["nnUNetv2_predict", "-i", join(raw, "imagesUnlabeled"), "-o", join(workdir, "timing_stock"),
                    "-d", "811", "-c", "2d", "-tr", cervix, "-f", "all", "-device", args.device,
                    "--disable_tta", "-npp", "1", "-nps", "1"], check=True, capture_output=True,
                   env={**os.environ, "nnUNet_extTrainer": ext_trainer_path()})
    stock = time.perf_counter() - t
    n = args.num_unlabeled

    print(f"\nHC18, {args.num_labeled} labeled / {n} unlabeled / {args.num_test} test images, longer side "
          f"{args.max_size} px, {_demo_budget()} per training (the demo budget), fold all")
    print("\n| trainer | test Dice |\n|---|---|")
    for trainer, dice in rows:
        print(f"| {trainer} | {dice:.4f} |")
    print("\n| pseudo-labels for | ours (s / case) | stock nnUNetv2_predict (s / case) | ratio ours / stock |")
    print("|---|---|---|---|")
    print(f"| {n} unlabeled cases | {ours / n:.4f} | {stock / n:.4f} | {ours / stock:.2f} |")
    print("\ntraining wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
