"""semi_nnUNet_benchmark: argument parsing only; the work is in semi_nnunet.benchmarking.label_efficiency."""
import argparse
import shlex
import sys

from semi_nnunet.run.arguments import add_executor_arguments, executor_options, parse
from semi_nnunet.tasks.executors import TaskFailed
from semi_nnunet.utilities.errors import InputError


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Label efficiency: train the supervised nnU-Net and semi-supervised trainers (with and without "
                    "HCO) on the same n labeled cases (the other training images unlabeled) and budget, with several "
                    "training seeds; predict the test set, evaluate, and write results.md / results.json / plots "
                    "(gap recovery against the baseline on every label, bootstrap intervals, a convergence check). "
                    "The grid's cost is estimated and printed before anything trains. Rerun to resume.",
        epilog="Examples:\n  semi_nnUNet_benchmark -d 1 -c 2d --labeled 5 20 all --repeats 3 -device cuda\n"
               "  semi_nnUNet_benchmark -d 1 -c 2d --labeled 5 all --epochs 40 --iterations 50 --repeats 3 "
               "-device cpu -tr MeanTeacherTrainer --no-hco --estimate\n"
               "  semi_nnUNet_benchmark -d 1 -c 2d --labeled 5 all -tr --epochs 40 --iterations 50   "
               "# the baseline only",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True, help="dataset id, name or raw folder; must have imagesTs/ and labelsTs/")
    parser.add_argument("-c", default="2d", help="configuration (default 2d)")
    parser.add_argument("--labeled", nargs="+", required=True,
                        help="numbers of labeled cases, and 'all' for the supervised baseline on every labeled case "
                             "(the ceiling of the gap-recovery column), e.g. 5 20 all")
    parser.add_argument("-tr", nargs="*", default=None,
                        help="semi-supervised trainers (default: MeanTeacherTrainer SemiCervixTrainer HermesTrainer; "
                             "Hermes only for 2d); -tr with no name trains the baseline only (a learning curve)")
    parser.add_argument("--baseline", default="nnUNetTrainer", help="supervised baseline (default nnUNetTrainer)")
    parser.add_argument("--no-hco", action="store_true", help="skip the _HCO variant of each trainer")
    parser.add_argument("--epochs", type=int, default=None, help="budget: epochs (default: each trainer's schedule)")
    parser.add_argument("--iterations", type=int, default=None, help="budget: iterations per epoch (with --epochs)")
    parser.add_argument("--stages", type=int, default=None,
                        help="pseudo-label stages of staged trainers (default: the trainer's)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="training seeds per method: 0..R-1 (default 1; 3 for a comparison to report)")
    parser.add_argument("--seed", type=int, default=0, help="subset seed: which labeled cases are kept (default 0)")
    parser.add_argument("--estimate", action="store_true",
                        help="prepare the subsets, print the estimated time of the grid and stop")
    parser.add_argument("-o", default="semi_nnunet_benchmark", help="working and output folder")
    parser.add_argument("--subset_id", type=int, default=899, help="dataset id of the subsets inside -o")
    parser.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"])
    parser.add_argument("-np", type=int, default=2, help="processes for preprocessing and evaluation")
    parser.add_argument("--empty", default="nan", choices=["nan", "one"],
                        help="a test case whose reference and prediction are both empty: nan = left out of the mean "
                             "(nnU-Net's rule, default), one = Dice 1 (semi_nnUNet_evaluate --empty)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print the grid's tasks (done / to do) and run nothing")
    add_executor_arguments(parser, "run this many jobs side by side (a local Ray instance with that many slots; "
                                   "one GPU each with -device cuda)")
    args = parse(parser, argv)

    from semi_nnunet.benchmarking.label_efficiency import run_label_efficiency
    from semi_nnunet.trainers.lookup import TrainingError
    command = "semi_nnUNet_benchmark " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        run_label_efficiency(args.d, args.c, args.labeled, args.tr, args.seed, args.epochs, args.iterations,
                             not args.no_hco, args.stages, args.baseline, args.device, args.o, args.subset_id,
                             args.np, command, repeats=args.repeats, estimate_only=args.estimate,
                             dry_run=args.dry_run, executor=executor_options(args), empty_rule=args.empty)
    except (InputError, TrainingError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)
    except TaskFailed as e:  # the other tasks ran; the message says how to continue
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
