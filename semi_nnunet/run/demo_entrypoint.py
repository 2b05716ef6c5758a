"""semi_nnUNet_demo: argument parsing only; the work is in semi_nnunet.demo_api."""
import argparse
import sys

from semi_nnunet.utilities.raw_dataset import DatasetError
from semi_nnunet.run.arguments import parse


def main(argv=None) -> None:
    from semi_nnunet.demo_api import DEFAULT_TRAINERS, run_demo
    parser = argparse.ArgumentParser(
        description="Run semi_nnunet end to end on the bundled HC18 subset (5 labeled, 295 unlabeled, 100 test "
                    "images at 64 px): convert, plan and preprocess, train, predict the test images and print Dice, "
                    "then the multi-seed benchmarks (at the demo's budget, and converged) that tell the methods "
                    "apart.")
    parser.add_argument("-o", "--output", default="semi_nnunet_demo", help="working folder (default: %(default)s)")
    parser.add_argument("-tr", nargs="+", default=None,
                        help="trainers to compare (default: the supervised baseline and the method the packaged "
                             "multi-seed benchmark shows best: " + " and ".join(DEFAULT_TRAINERS) + ")")
    parser.add_argument("-device", default="cpu", choices=["cpu", "cuda", "mps"], help="default: cpu")
    parser.add_argument("-np", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--verbose", action="store_true",
                        help="print nnU-Net's log lines instead of one progress bar per training")
    args = parse(parser, argv)
    try:
        run_demo(args.output, args.tr or DEFAULT_TRAINERS, args.device, args.np, args.verbose)
    except (DatasetError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
