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
    parser.add_argument("-np", type=int, nargs="+", default=None,
                        help="worker processes (default: nnU-Net's default); one number, or one per configuration "
                             "of -c as in nnU-Net")
    parser.add_argument("-npfp", type=int, default=None, help="worker processes of the fingerprint (default: -np)")
    parser.add_argument("--clean", action="store_true", help="extract the fingerprint again even when it is current")
    parser.add_argument("-fpe", default="DatasetFingerprintExtractor",
                        help="fingerprint extractor class (nnU-Net has one: DatasetFingerprintExtractor)")
    parser.add_argument("-overwrite_target_spacing", nargs="+", type=float, default=None,
                        help="not supported: a custom spacing goes into a planner (see the help text's error)")
    parser.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    parser.add_argument("--no_progress", "--no_pbar", dest="no_progress", action="store_true",
                        help="no progress bars")
    parser.add_argument("--replace_plans", action="store_true",
                        help="replace existing plans of the same name that this run would plan differently (default: "
                             "refuse, so trainings from them keep their plans; or use -overwrite_plans_name)")
    args = parse(parser, argv)

    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    from semi_nnunet.utilities.errors import InputError as Refused
    try:
        if args.fpe != "DatasetFingerprintExtractor":
            raise Refused(f"Unknown fingerprint extractor '{args.fpe}'.", "-fpe",
                          "drop -fpe (nnU-Net's DatasetFingerprintExtractor is the only one).")
        if args.overwrite_target_spacing:
            raise Refused("-overwrite_target_spacing is not supported by semi_nnUNet_plan_and_preprocess.",
                          "-overwrite_target_spacing", "plan with a planner that sets the spacing (-pl, with "
                                                        "-overwrite_plans_name), e.g. a subclass of ExperimentPlanner.")
        nps = args.np or [None]
        if len(nps) not in (1, len(args.c)):
            raise Refused(f"-np gives {len(nps)} numbers for {len(args.c)} configurations.", "-np",
                          "give one number, or one per configuration of -c.")
        runs = [(args.c, nps[0])] if len(nps) == 1 else [([c], n) for c, n in zip(args.c, nps)]
        for d in args.d:
            for i, (configurations, n) in enumerate(runs):
                plan_and_preprocess(d, configurations, args.pl, args.overwrite_plans_name,
                                    args.verify_dataset_integrity, n, args.gpu_memory_target, not args.no_pp,
                                    not args.no_progress, args.replace_plans, args.npfp, args.clean and i == 0)
    except InputError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
