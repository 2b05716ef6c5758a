"""semi_nnUNet_run_uslnet: argument parsing only; the work is in semi_nnunet.run.uslnet_api."""
import argparse
import sys

from semi_nnunet.utilities.errors import InputError
from semi_nnunet.run.arguments import parse


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="USL-Net without any label: MoCo v2 pre-training (or --moco_checkpoint), CCAM saliency, "
                    "uncertainty-module pseudo-labels, then refining cycles of nnU-Net training on certain pixels. "
                    "Put every image into imagesUnlabeled/ of the raw dataset. Rerunning continues where it stopped.")
    parser.add_argument("dataset", help="dataset id or name")
    parser.add_argument("-c", default="2d", help="configuration (2D only; default 2d)")
    parser.add_argument("-tr", default="USLNetTrainer",
                        help="USL-Net trainer (its class attributes are the settings), e.g. USLNetTrainer, "
                             "USLNetTrainer_50epochs, USLNetTrainer_tiny (CPU smoke runs)")
    parser.add_argument("--cycles", type=int, default=None, help="refining cycles (default: the trainer's, 5)")
    parser.add_argument("-device", default="cuda", choices=["cpu", "cuda", "mps"], help="default: cuda")
    parser.add_argument("--moco_checkpoint", default=None,
                        help="ResNet weights instead of in-domain MoCo v2 pre-training: the official MoCo format "
                             "(module.encoder_q.*) or a torchvision ResNet state dict of the trainer's backbone "
                             "(env SEMI_NNUNET_USLNET_MOCO also works)")
    parser.add_argument("--eval_labels", default=None,
                        help="folder of labels (CASE.png) for the unlabeled images, used only to report Dice per "
                             "cycle; never trained on")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--mirroring", action="store_true",
                        help="mirroring test-time augmentation when predicting the next cycle's pseudo-labels")
    parser.add_argument("--no_test_eval", action="store_true",
                        help="do not predict imagesTs / score labelsTs after every cycle")
    parser.add_argument("-np", type=int, default=2, help="processes for planning / preprocessing if needed")
    args = parse(parser, argv)

    from semi_nnunet.run.uslnet_api import run_uslnet
    from semi_nnunet.trainers.uslnet import USLNetError
    try:
        result = run_uslnet(args.dataset, args.c, args.tr, args.cycles, args.device, args.moco_checkpoint,
                            args.eval_labels, args.p, args.mirroring, not args.no_test_eval, args.np)
    except (USLNetError, InputError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"Final model: {result['results_folder']} (fold all); report: {result['work_folder']}/report.json")


if __name__ == "__main__":
    main()
