"""USL-Net on HC18 with every label withheld: Dice of each cycle's pseudo-labels against the withheld labels.

    python benchmarks/uslnet_hc18.py --hc18 $DATA/HC18/training_set -device cuda
    python benchmarks/uslnet_hc18.py --hc18 ... --num-train 20 --num-test 8 --max-size 96 -tr USLNetTrainer_tiny \
        -device cpu --cycles 2        # smoke run (minutes on a CPU; not a result)

HC18 (fetal head, 2D ultrasound) is converted with a seeded, patient-grouped split: ``--num-train`` images become
unlabeled training images (their labels moved out of the dataset into ``withheld_labels/``, never seen by training)
and ``--num-test`` images a labeled test set, downsampled so the longer side is ``--max-size`` px. The pipeline runs
with ``-tr`` (default ``USLNetTrainer_50epochs``: in-domain MoCo v2 200 epochs, CCAM 10 epochs, 5 cycles x 50
nnU-Net epochs on ResNet-50 at 224 px) and ``--moco_checkpoint`` if you have ImageNet MoCo v2 weights (the CCAM
code's default; recommended). Per cycle it prints what the cycle trained on (foreground / uncertain fractions,
Dice of the certain foreground against the withheld labels, accuracy of the certain pixels), the cycle's prediction
on the training images (Dice) and on the test images (Dice), from the pipeline's ``report.json``.

HC18's heads are large, not always centred, and drawn as ellipses on speckle: a harder case for class-agnostic
saliency than dermoscopy (USL-Net's target). Expect the saliency to find "the bright textured region", which is not
always the head; the per-cycle numbers show whether cycling helps.
"""
import argparse
import os
import tempfile
import time

from batchgenerators.utilities.file_and_folder_operations import isfile, join


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hc18", required=True, help="HC18's training_set folder")
    parser.add_argument("--num-train", type=int, default=500, help="unlabeled training images (labels withheld)")
    parser.add_argument("--num-test", type=int, default=200, help="labeled test images")
    parser.add_argument("--max-size", type=int, default=256, help="longer image side in px after downsampling")
    parser.add_argument("-tr", default="USLNetTrainer_50epochs", help="USL-Net trainer variant")
    parser.add_argument("--cycles", type=int, default=None, help="default: the trainer's (5)")
    parser.add_argument("--moco_checkpoint", default=None, help="MoCo v2 ResNet-50 weights (official format)")
    parser.add_argument("-device", default="cuda")
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    parser.add_argument("--dataset-id", type=int, default=812)
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_n_proc_DA", "4" if args.device == "cuda" else "0")
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="uslnet_hc18_"))
    from semi_nnunet.dataset_conversion.hc18 import convert_hc18
    from semi_nnunet.dataset_conversion.synthetic import set_nnunet_paths
    from semi_nnunet.run.uslnet_api import run_uslnet
    from semi_nnunet.uslnet.data import withhold_labels

    paths = set_nnunet_paths(workdir)
    withheld = join(workdir, "withheld_labels")
    raw = join(paths["nnUNet_raw"], f"Dataset{args.dataset_id:03d}_HC18USL")
    if not isfile(join(raw, "dataset.json")):
        raw = convert_hc18(args.hc18, args.dataset_id, num_labeled=args.num_train, num_unlabeled=0,
                           num_test=args.num_test, seed=0, max_size=args.max_size, output_root=paths["nnUNet_raw"],
                           dataset_name="HC18USL", verbose=False)
        withhold_labels(raw, withheld)  # every training image unlabeled; labels only for the report
    start = time.time()
    result = run_uslnet(args.dataset_id, "2d", args.tr, args.cycles, args.device, args.moco_checkpoint, withheld,
                        num_processes=2)
    minutes = (time.time() - start) / 60

    def fmt(v):
        return "-" if v is None else f"{v:.4f}"
    print(f"\nUSL-Net ({args.tr}) on HC18, {args.num_train} unlabeled training images (labels withheld), "
          f"{args.num_test} test images, longer side {args.max_size} px; {minutes:.1f} min; workdir {workdir}")
    print("\n| cycle | trained on | fg frac | uncertain frac | pseudo-label Dice | certain-pixel acc | "
          "change (fg Dice vs prev.) | prediction Dice (train) | test Dice |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in result["cycles"]:
        pl, pr = row["pseudo_labels"], row["prediction"]
        print(f"| {row['cycle']} | {pl['source']} | {fmt(pl['foreground_fraction'])} | "
              f"{fmt(pl['uncertain_fraction'])} | {fmt(pl['dice'])} | {fmt(pl['certain_accuracy'])} | "
              f"{fmt(pl['change_foreground_dice'])} | {fmt(pr['dice'])} | {fmt(pr['test_dice'])} |")
    print(f"\nOverlay sheets: {result['work_folder']}/cycle_<k>/overlays.png; report: "
          f"{result['work_folder']}/report.json / report.png")


if __name__ == "__main__":
    main()
