"""semi_nnUNet_benchmark: argument parsing only; the work is in semi_nnunet.benchmarking.label_efficiency."""
import argparse
import shlex
import sys

from semi_nnunet.utilities.errors import InputError


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Label efficiency: train the supervised nnU-Net and semi-supervised trainers (with and without "
                    "HCO) on the same n labeled cases (the other training images unlabeled) and budget, predict the "
                    "test set, evaluate, and write results.md / results.json / plots. Rerun to resume.",
        epilog="Examples:\n  semi_nnUNet_benchmark -d 1 -c 2d --labeled 5 10 50 -device cuda\n"
               "  semi_nnUNet_benchmark -d 1 -c 2d --labeled 10 --epochs 20 --iterations 25 -device cpu "
               "-tr MeanTeacherTrainer --no-hco",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True, help="dataset id, name or raw folder; must have imagesTs/ and labelsTs/")
    parser.add_argument("-c", default="2d", help="configuration (default 2d)")
    parser.add_argument("--labeled", type=int, nargs="+", required=True, help="numbers of labeled cases, e.g. 5 10 50")
    parser.add_argument("-tr", nargs="+", default=None,
                        help="semi-supervised trainers (default: MeanTeacherTrainer SemiCervixTrainer HermesTrainer; "
                             "Hermes only for 2d)")
    parser.add_argument("--baseline", default="nnUNetTrainer", help="supervised baseline (default nnUNetTrainer)")
    parser.add_argument("--no-hco", action="store_true", help="skip the _HCO variant of each trainer")
    parser.add_argument("--epochs", type=int, default=None, help="budget: epochs (default: each trainer's schedule)")
    parser.add_argument("--iterations", type=int, default=None, help="budget: iterations per epoch (with --epochs)")
    parser.add_argument("--stages", type=int, default=None,
                        help="pseudo-label stages of staged trainers (default: the trainer's)")
    parser.add_argument("--seed", type=int, default=0, help="which labeled cases are kept (default 0)")
    parser.add_argument("-o", default="semi_nnunet_benchmark", help="working and output folder")
    parser.add_argument("--subset_id", type=int, default=899, help="dataset id of the subsets inside -o")
    parser.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"])
    parser.add_argument("-np", type=int, default=2, help="processes for preprocessing and evaluation")
    args = parser.parse_args(argv)
    if bool(args.iterations) != bool(args.epochs):
        parser.error("a budget needs both --epochs and --iterations")

    from semi_nnunet.benchmarking.label_efficiency import run_label_efficiency
    from semi_nnunet.run.train_api import TrainingError
    command = "semi_nnUNet_benchmark " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        run_label_efficiency(args.d, args.c, args.labeled, args.tr, args.seed, args.epochs,
                             args.iterations, not args.no_hco, args.stages, args.baseline, args.device, args.o,
                             args.subset_id, args.np, command)
    except (InputError, TrainingError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
