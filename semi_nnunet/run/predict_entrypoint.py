"""semi_nnUNet_predict: argument parsing only; the work is in semi_nnunet.inference.predict_api."""
import argparse
import sys

from semi_nnunet.inference.models import PredictionError
from semi_nnunet.run.arguments import add_executor_arguments, executor_options, parse
from semi_nnunet.tasks.executors import TaskFailed
from semi_nnunet.utilities.errors import InputError


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Predict images with one trained model or an in-memory ensemble of folds, trainers, stages and "
                    "configurations (nnU-Net's sliding window, Gaussian weighting and mirroring).",
        epilog="Examples:\n  semi_nnUNet_predict -i imagesTs -o pred -d 1 -c 2d -tr MeanTeacherTrainer\n"
               "  semi_nnUNet_predict -i imagesTs -o pred -d 1 -c 2d 3d_fullres -tr nnUNetTrainer SemiCervixTrainer "
               "--stage 2\n  semi_nnUNet_predict -i imagesTs -o pred -m RESULTS/Dataset001_X/T__nnUNetPlans__2d\n"
               "  semi_nnUNet_predict -i imagesTs -o pred --spec ensemble.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", required=True, help="input folder: CASE_0000<file ending> per channel")
    parser.add_argument("-o", required=True, help="output folder")
    parser.add_argument("-d", default=None, help="dataset id or name (needed with -c/-tr; checked against -m/--spec)")
    parser.add_argument("-c", nargs="+", default=None, help="configuration(s), e.g. 2d 3d_fullres")
    parser.add_argument("-tr", nargs="+", default=None, help="trainer(s); every trainer x configuration is a member")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-f", nargs="+", default=None,
                        help="folds to ensemble (default 0 1 2 3 4, as nnUNetv2_predict; 'all' for fold_all)")
    parser.add_argument("--stage", type=int, default=None,
                        help="staged trainers: use the models of this stage (TRAINER_stage<K>; 0 = the initial one)")
    parser.add_argument("-m", nargs="+", default=None,
                        help="model folder(s) (<Trainer>__<Plans>__<Config>) instead of -c/-tr")
    parser.add_argument("--spec", default=None,
                        help='JSON list of members: [{"model": DIR, "folds": [0, 1]}, {"dataset": 1, '
                             '"configuration": "2d", "trainer": "T", "stage": 2}, ...]')
    parser.add_argument("-chk", "--chk", dest="chk", default="checkpoint_final.pth",
                        help="checkpoint name (default checkpoint_final.pth)")
    parser.add_argument("--save_probabilities", action="store_true", help="also write CASE.npz (+ .pkl) like nnU-Net")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (faster)")
    parser.add_argument("--average", default="probabilities", choices=["probabilities", "logits"],
                        help="fold averaging: probabilities (default, as nnUNetv2_ensemble) or logits (as "
                             "nnUNetv2_predict)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo finished cases / replace another ensemble's output")
    parser.add_argument("-device", default="cuda", choices=["cpu", "cuda", "mps"], help="default: cuda")
    parser.add_argument("-step_size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch size (nnU-Net's default 0.5)")
    parser.add_argument("--not_on_device", action="store_true",
                        help="keep each image's prediction in CPU memory (nnU-Net's flag, for very large images)")
    parser.add_argument("--disable_progress_bar", action="store_true", help="no progress bar")
    parser.add_argument("-npp", type=int, default=None,
                        help="accepted for nnUNetv2_predict scripts: the next case is always preprocessed in a "
                             "background thread while one is predicted")
    parser.add_argument("-nps", type=int, default=None,
                        help="accepted for nnUNetv2_predict scripts: segmentations are exported in a background thread")
    parser.add_argument("--verbose", action="store_true", help="accepted for nnUNetv2_predict scripts")
    parser.add_argument("-num_parts", "--num_parts", "--num-parts", dest="num_parts", type=int, default=1,
                        help="split the cases into this many parts (as nnUNetv2_predict); with -part_id this call "
                             "predicts one part, without it (and --executor ray or slurm) every part is a task")
    parser.add_argument("-part_id", "--part_id", "--part-id", dest="part_id", type=int, default=None,
                        help="the part this call predicts (0..num_parts-1)")
    add_executor_arguments(parser, "predict this many parts side by side (a local Ray instance; one GPU each with "
                                   "-device cuda); sets -num_parts when it is not given")
    args = parse(parser, argv)

    from semi_nnunet.inference.models import Member, member_from_names, members_from_spec
    from semi_nnunet.inference.predict_api import predict, predict_parts
    try:
        folds = [int(f) if f.isdigit() else f for f in args.f] if args.f else []
        members = []
        if args.m:
            members += [Member(m, folds, args.chk) for m in args.m]
        if args.spec:
            members += members_from_spec(args.spec)
        if args.c or args.tr:
            if not (args.c and args.tr and args.d):
                raise PredictionError("-c and -tr name models only together with -d.", "-d / -c / -tr",
                                      "give all three (e.g. -d 1 -c 2d -tr MeanTeacherTrainer), or -m MODEL_DIR.")
            members += [member_from_names(args.d, c, t, args.p, folds, args.stage, args.chk)
                        for c in args.c for t in args.tr]
        if not members:
            raise PredictionError("No model given.", "arguments", "give -d/-c/-tr, -m MODEL_DIR or --spec FILE.")
        executor = executor_options(args)
        num_parts = max(args.num_parts, args.parallel) if args.num_parts == 1 else args.num_parts
        if args.part_id is None and (executor.engine != "local" or num_parts > 1):
            predict_parts(args.i, args.o, members, num_parts, executor, args.d,
                          save_probabilities=args.save_probabilities, use_mirroring=not args.disable_tta,
                          average=args.average, device=args.device, overwrite=args.overwrite,
                          step_size=args.step_size, on_device=not args.not_on_device)
            print(f"Predicted {num_parts} part(s) into {args.o}")
            return
        if executor.engine != "local":
            raise PredictionError("-part_id predicts one part here; --executor would run every part.",
                                  "-part_id / --executor", "drop -part_id to predict all parts with the executor, or "
                                                           "drop --executor.")
        done = predict(args.i, args.o, members, args.d, args.save_probabilities, not args.disable_tta, args.average,
                       args.device, args.overwrite, not args.disable_progress_bar, num_parts, args.part_id or 0,
                       args.step_size, not args.not_on_device)
    except InputError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)
    except TaskFailed as e:  # the other tasks ran; the message says how to continue
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"Predicted {len(done)} case(s) into {args.o}")


if __name__ == "__main__":
    main()
