"""Dataset converter console scripts: argument parsing only; the work is in semi_nnunet.dataset_conversion.

    semi_nnUNet_convert_hc18             HC18 fetal head ultrasound (2D PNG)
    semi_nnUNet_convert_msd_hippocampus  MSD Task04 Hippocampus (3D NIfTI)
    semi_nnUNet_convert_2d               your own folders of 2D images and masks

A :class:`~semi_nnunet.utilities.raw_dataset.DatasetError` is printed as a message (no traceback) and the command
exits with status 2.
"""
import argparse
import sys
from typing import Callable, Optional, Sequence

from semi_nnunet.utilities.raw_dataset import DatasetError
from semi_nnunet.run.arguments import parse


def _run(call: Callable[[], str]) -> None:
    try:
        folder = call()
    except DatasetError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)
    print(folder)


def _split_arguments(parser: argparse.ArgumentParser, num_labeled: int, num_test: int) -> None:
    parser.add_argument("--num-labeled", type=int, default=num_labeled,
                        help=f"labeled training cases (imagesTr/labelsTr; default {num_labeled})")
    parser.add_argument("--num-unlabeled", type=int, default=None,
                        help="unlabeled cases (imagesUnlabeled, masks withheld; default: all remaining)")
    parser.add_argument("--num-test", type=int, default=num_test,
                        help=f"labeled test cases (imagesTs/labelsTs, never used for training; default {num_test})")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output-root", default=None,
                        help="folder to write DatasetXXX_Name into (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder of that name")


def convert_hc18_entry(argv: Optional[Sequence[str]] = None) -> None:
    from semi_nnunet.dataset_conversion.hc18 import DEFAULT_DATASET_ID
    parser = argparse.ArgumentParser(
        description="Convert the HC18 fetal head ultrasound training set (NNN_HC.png + NNN_HC_Annotation.png) into a "
                    "semi-supervised nnU-Net raw dataset: patient-grouped, seeded split into labeled, unlabeled "
                    "and test images; outline annotations filled into masks (label 1 = head).")
    parser.add_argument("-i", "--input", required=True, help="HC18 training_set folder (or the folder holding it)")
    parser.add_argument("-d", "--dataset-id", type=int, default=DEFAULT_DATASET_ID,
                        help=f"dataset id (default {DEFAULT_DATASET_ID})")
    parser.add_argument("-n", "--name", default="HC18", help="dataset name (default HC18)")
    _split_arguments(parser, 50, 300)
    parser.add_argument("--max-size", type=int, default=None,
                        help="shrink images so the longer side is at most this many pixels (default: full size)")
    parser.add_argument("--downsample", type=float, default=1.0,
                        help="scale factor applied to the images, e.g. 0.5 (default 1.0)")
    _common_arguments(parser)
    args = parse(parser, argv)
    from semi_nnunet.dataset_conversion.hc18 import convert_hc18
    _run(lambda: convert_hc18(args.input, dataset_id=args.dataset_id, num_labeled=args.num_labeled,
                              num_unlabeled=args.num_unlabeled, num_test=args.num_test, seed=args.seed,
                              downsample=args.downsample, max_size=args.max_size, output_root=args.output_root,
                              dataset_name=args.name, overwrite=args.overwrite))


def convert_msd_hippocampus_entry(argv: Optional[Sequence[str]] = None) -> None:
    from semi_nnunet.dataset_conversion.msd_hippocampus import DEFAULT_DATASET_ID
    parser = argparse.ArgumentParser(
        description="Convert MSD Task04 Hippocampus (images/ and masks/ hippocampus_XXX.nii.gz) into a "
                    "semi-supervised nnU-Net raw dataset: seeded split into labeled, unlabeled and test cases, "
                    "geometry kept.")
    parser.add_argument("-i", "--input", required=True, help="folder holding images/ and masks/")
    parser.add_argument("-d", "--dataset-id", type=int, default=DEFAULT_DATASET_ID,
                        help=f"dataset id (default {DEFAULT_DATASET_ID})")
    parser.add_argument("-n", "--name", default="Hippocampus", help="dataset name (default Hippocampus)")
    _split_arguments(parser, 20, 60)
    _common_arguments(parser)
    args = parse(parser, argv)
    from semi_nnunet.dataset_conversion.msd_hippocampus import convert_msd_hippocampus
    _run(lambda: convert_msd_hippocampus(args.input, dataset_id=args.dataset_id, num_labeled=args.num_labeled,
                                         num_unlabeled=args.num_unlabeled, num_test=args.num_test, seed=args.seed,
                                         output_root=args.output_root, dataset_name=args.name,
                                         overwrite=args.overwrite))


def _names(text: Optional[str]):
    return None if text is None else [t.strip() for t in text.split(",")]


def convert_2d_folder_entry(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert folders of 2D images (PNG/JPG/BMP/TIF) and masks into a semi-supervised nnU-Net raw "
                    "dataset (PNG). Masks are matched to images by file stem (optionally with a suffix such as "
                    "_mask, _seg, _Annotation) and are binary 0/255 or class ids 0..K.")
    parser.add_argument("--images", required=True, help="labeled images")
    parser.add_argument("--masks", required=True, help="their masks (may be the images folder itself)")
    parser.add_argument("--unlabeled-dir", default=None, help="unlabeled images (no masks)")
    parser.add_argument("--test-images", default=None, help="held-out test images")
    parser.add_argument("--test-masks", default=None, help="their masks (optional)")
    parser.add_argument("--classes-csv", default=None,
                        help="image-level classes: CSV with columns filename (or stem) and class")
    parser.add_argument("--class-pattern", default=None,
                        help="image-level classes: regex with a named group 'class' searched in the file stem, "
                             "e.g. '^(?P<class>benign|malignant)'")
    parser.add_argument("--class-names", default=None,
                        help="comma-separated class names, in id order (default: sorted class strings)")
    parser.add_argument("--label-names", default=None,
                        help="comma-separated mask label names, in id order starting with background "
                             "(default: background,foreground or class_k)")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="dataset id, e.g. 600")
    parser.add_argument("-n", "--name", required=True, help="dataset name, e.g. MyUltrasound")
    _common_arguments(parser)
    args = parse(parser, argv)
    from semi_nnunet.dataset_conversion.folder_2d import convert_2d_folder
    _run(lambda: convert_2d_folder(args.images, args.masks, args.dataset_id, args.name,
                                   unlabeled_dir=args.unlabeled_dir, test_images_dir=args.test_images,
                                   test_masks_dir=args.test_masks, class_csv=args.classes_csv,
                                   class_pattern=args.class_pattern, class_names=_names(args.class_names),
                                   label_names=_names(args.label_names), output_root=args.output_root,
                                   overwrite=args.overwrite))
