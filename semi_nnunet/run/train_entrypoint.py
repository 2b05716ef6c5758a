"""semi_nnUNet_train: argument parsing only; the work is in semi_nnunet.train_api."""
import argparse
import sys

from semi_nnunet.run.arguments import add_executor_arguments, executor_options, parse
from semi_nnunet.tasks.executors import TaskFailed
from semi_nnunet.utilities.errors import InputError


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Train a semi_nnunet (or nnU-Net) trainer: semi_nnUNet_train DATASET CONFIG TRAINER [FOLD ...], "
                    "or nnU-Net's form semi_nnUNet_train DATASET CONFIG FOLD -tr TRAINER. With no fold, every fold of "
                    "splits_final.json is trained in turn.")
    parser.add_argument("dataset", help="dataset id or name")
    parser.add_argument("configuration", help="e.g. 2d, 3d_fullres")
    parser.add_argument("trainer", nargs="?", default=None,
                        help="trainer class name, e.g. MeanTeacherTrainer or nnUNetTrainer (baseline); with -tr the "
                             "first fold")
    parser.add_argument("folds", nargs="*", help="folds (0 1 2 3 4 or all); default: every fold of the splits")
    parser.add_argument("-tr", default=None, help="the trainer, nnU-Net's way (then every positional after CONFIG is "
                                                  "a fold)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-device", default="cuda", choices=["cpu", "cuda", "mps"], help="default: cuda")
    parser.add_argument("-num_gpus", type=int, default=1, help="GPUs for DDP training (default 1)")
    parser.add_argument("-pretrained_weights", default=None, help="checkpoint to initialise the network from")
    parser.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--val", action="store_true", help="only run the final validation")
    parser.add_argument("--val_best", action="store_true", help="validate with checkpoint_best instead of final")
    parser.add_argument("--npz", action="store_true", help="save softmax outputs of the validation (ensembling)")
    parser.add_argument("--verbose", action="store_true",
                        help="print nnU-Net's log lines (default: one progress bar per training with the loss and "
                             "pseudo-Dice; the full log is in the fold folder's training_log_*.txt either way)")
    parser.add_argument("--disable_checkpointing", action="store_true",
                        help="write no checkpoints (as nnU-Net: for testing; nothing can be continued or predicted)")
    parser.add_argument("--optimizer", default=None,
                        choices=["sgd", "adamw", "hco_sgd", "hco_adamw", "co_sgd", "co_adamw"],
                        help="optimizer of a semi-supervised trainer (default: the trainer's, nnU-Net's SGD); "
                             "trains the variant TRAINER_<optimizer>, so results go to their own folder")
    parser.add_argument("--stages", type=int, default=None,
                        help="staged trainers (e.g. SemiCervixTrainer): number of pseudo-label stages after the "
                             "initial one (default: the trainer's, 4 for SemiCervixTrainer; 0: initial stage only)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print the task graph (done / to do per stage and fold) and run nothing")
    parser.add_argument("--stop-agreement", type=float, default=None,
                        help="staged trainers: stop once a stage's pseudo-labels agree with the previous stage's "
                             "(mean foreground Dice) at least this much, e.g. 0.98")
    parser.add_argument("--finetune", action="store_true",
                        help="staged trainers: start each stage from the same fold's previous-stage model instead of "
                             "a freshly initialised network")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed Python, numpy and torch before each fold's trainer is built; with "
                             "nnUNet_n_proc_DA=0 on one device two runs give the same weights "
                             "(documentation/reliability.md)")
    add_executor_arguments(parser, "train this many folds side by side (a local Ray instance with that many "
                                   "slots; one GPU each with -device cuda, from CUDA_VISIBLE_DEVICES when set)")
    args = parse(parser, argv)

    from semi_nnunet.train_api import train
    from semi_nnunet.trainers.lookup import with_optimizer
    from semi_nnunet.utilities.environment import environment
    try:
        trainer, folds = trainer_and_folds(args)
        with environment({} if args.verbose else {"SEMI_NNUNET_PROGRESS": "bar"}):
            outputs = train(args.dataset, args.configuration, with_optimizer(trainer, args.optimizer),
                            folds or None, args.p, args.device,
                            args.c, args.val, args.npz, args.num_gpus, args.pretrained_weights, args.val_best,
                            args.stages, args.dry_run, 1, args.stop_agreement, args.finetune, args.seed,
                            executor=executor_options(args), disable_checkpointing=args.disable_checkpointing)
    except InputError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)
    except TaskFailed as e:  # the other tasks ran; the message says how to continue
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(1)
    print("Trained models:\n  " + "\n  ".join(outputs))


def _is_fold(value: str) -> bool:
    return value.isdigit() or value == "all"


def trainer_and_folds(args: argparse.Namespace):
    """Ours (``D C TRAINER [FOLD ...]``) or nnU-Net's form (``D C FOLD -tr TRAINER``)."""
    from semi_nnunet.trainers.lookup import TrainingError
    if args.tr:
        folds = ([args.trainer] if args.trainer else []) + list(args.folds)
        bad = [f for f in folds if not _is_fold(f)]
        if bad:
            raise TrainingError(f"With -tr {args.tr} every argument after the configuration is a fold, but '{bad[0]}' "
                                f"is not one.", "fold arguments", "give folds 0 1 2 3 4 or all, or drop -tr and name "
                                                                  "the trainer after the configuration.")
        return args.tr, folds
    if args.trainer is None:
        raise TrainingError("No trainer given.", "trainer argument",
                            f"semi_nnUNet_train {args.dataset} {args.configuration} TRAINER [FOLD ...], e.g. "
                            f"MeanTeacherTrainer, or nnUNetTrainer for the supervised baseline.")
    if _is_fold(args.trainer):
        raise TrainingError(f"'{args.trainer}' stands where the trainer name goes: it is a fold.", "trainer argument",
                            f"semi_nnUNet_train {args.dataset} {args.configuration} TRAINER {args.trainer}, or "
                            f"nnU-Net's form semi_nnUNet_train {args.dataset} {args.configuration} {args.trainer} -tr "
                            f"TRAINER (nnUNetTrainer is the supervised baseline).")
    return args.trainer, list(args.folds)


def ext_path_main() -> None:
    """semi_nnUNet_ext_path: the folder for nnUNet_extTrainer (stock nnU-Net commands then find our trainers)."""
    from semi_nnunet.trainers.lookup import ext_trainer_path
    print(ext_trainer_path())


if __name__ == "__main__":
    main()
