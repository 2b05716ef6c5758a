"""semi_nnUNet_plan_and_preprocess: argument parsing only; the work is in semi_nnunet.planners."""
import argparse
import sys

from semi_nnunet.utilities.errors import InputError
from semi_nnunet.run.arguments import parse


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="nnU-Net's fingerprint and plans from the labeled cases, then preprocessing of labeled and "
                    "unlabeled (imagesUnlabeled/) cases with the same plans. Re-running skips what is current.")
    parser.add_argument("-d", nargs="+", required=True, help="dataset id(s) or name(s)")
    parser.add_argument("-c", nargs="+", default=["2d", "3d_fullres"],
                        help="configurations to preprocess (default: 2d 3d_fullres)")
    parser.add_argument("-pl", default="ExperimentPlanner",
                        help="nnU-Net planner class, e.g. ExperimentPlanner (default), nnUNetPlannerResEncM")
    parser.add_argument("-overwrite_plans_name", default=None, help="custom plans identifier")
    parser.add_argument("-gpu_memory_target", type=float, default=None, help="GPU memory target in GB for planning")
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="read every image fully (labeled with nnU-Net's check, unlabeled with ours)")
    parser.add_argument("-np", type=int, default=None, help="worker processes (default: nnU-Net's default)")
    parser.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--replace_plans", action="store_true",
                        help="replace existing plans of the same name that this run would plan differently (default: "
                             "refuse, so trainings from them keep their plans; or use -overwrite_plans_name)")
    args = parse(parser, argv)

    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    try:
        for d in args.d:
            plan_and_preprocess(d, args.c, args.pl, args.overwrite_plans_name, args.verify_dataset_integrity,
                                args.np, args.gpu_memory_target, not args.no_pp, not args.no_progress,
                                args.replace_plans)
    except InputError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
