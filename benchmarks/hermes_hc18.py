"""Hermes on HC18: supervised nnU-Net vs Mean Teacher vs HermesTrainer segmentation-only vs HermesTrainer with
(proxy) image classes, same iteration budget.

    python benchmarks/hermes_hc18.py --hc18 $DATA/HC18/training_set

HC18 has no image-level classes, so Hermes runs segmentation-only on it (dual threshold + pixel contrast). To exercise
the classification branch as well, a second copy of the same split gets a proxy class per labeled and test image: 1
("large") when the head covers more of the image than the labeled images' median, else 0 ("small"); unlabeled images get
none (Hermes never reads an unlabeled image's class). Every trainer gets the demo's schedule (``nnUNetTrainer_demo``,
``MeanTeacherTrainer_demo``, ``HermesTrainer_demo``; the runs recorded in documentation/benchmarks.md used its earlier 8
epochs x 20 iterations), fold ``all``; test images are predicted with nnU-Net's predictor and scored with nnU-Net's
evaluation (foreground Dice); the classifier's test accuracy comes from ``HermesTrainer.classify`` on
nnU-Net-preprocessed test images."""
import argparse
import os
import tempfile
import time

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json, subfiles


def add_area_classes(raw: str) -> None:
    """Proxy image classes for labeled and test cases: head area above the labeled median -> 1, else 0."""
    from PIL import Image
    dataset_json = load_json(join(raw, "dataset.json"))
    ending = dataset_json["file_ending"]

    def fractions(folder):
        return {os.path.basename(f)[:-len(ending)]: float((np.asarray(Image.open(f)) > 0).mean())
                for f in subfiles(join(raw, folder), suffix=ending)}
    labeled, test = fractions("labelsTr"), fractions("labelsTs")
    threshold = float(np.median(list(labeled.values())))
    dataset_json["class_names"] = {"0": "small", "1": "large"}
    dataset_json["image_classes"] = {case: int(v > threshold) for case, v in {**labeled, **test}.items()}
    save_json(dataset_json, join(raw, "dataset.json"), sort_keys=False)


def classification_accuracy(model: str, raw: str, device: str) -> float:
    """Accuracy of ``classify`` on imagesTs after ``initialize()`` + ``load_checkpoint()`` (fold all)."""
    import torch
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from semi_nnunet.trainers import find_trainer
    plans_manager = PlansManager(join(model, "plans.json"))
    dataset_json = load_json(join(model, "dataset.json"))
    trainer = find_trainer("HermesTrainer_demo")({**plans_manager.plans, "continue_training": False}, "2d", "all",
                                                 dataset_json, torch.device(device))
    trainer.initialize()
    trainer.load_checkpoint(join(model, "fold_all", "checkpoint_final.pth"))
    truth = load_json(join(raw, "dataset.json"))["image_classes"]
    preprocessor = DefaultPreprocessor(verbose=False)
    hits = []
    for image in subfiles(join(raw, "imagesTs"), suffix="_0000" + dataset_json["file_ending"]):
        case = os.path.basename(image)[:-len("_0000" + dataset_json["file_ending"])]
        data, _, _ = preprocessor.run_case([image], None, plans_manager, plans_manager.get_configuration("2d"),
                                           dataset_json)
        hits.append(int(trainer.classify(data).argmax()) == truth[case])
    return float(np.mean(hits))


def _demo_budget() -> str:
    from semi_nnunet.trainers.variants import nnUNetTrainer_demo
    return "{num_epochs} epochs x {num_iterations_per_epoch} iterations".format(**nnUNetTrainer_demo.schedule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hc18", required=True)
    parser.add_argument("--num-labeled", type=int, default=20)
    parser.add_argument("--num-unlabeled", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--max-size", type=int, default=160)
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    workdir = args.workdir or tempfile.mkdtemp(prefix="hermes_hc18_")
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from semi_nnunet.dataset_conversion.hc18 import convert_hc18
    from semi_nnunet.dataset_conversion.synthetic import set_nnunet_paths
    from semi_nnunet.demo_api import predict_and_evaluate
    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    from semi_nnunet.train_api import train

    paths = set_nnunet_paths(workdir)
    raws = {}
    for dataset_id, name in ((812, "HC18"), (813, "HC18classes")):  # the same seeded split twice
        raws[dataset_id] = convert_hc18(args.hc18, dataset_id, args.num_labeled, args.num_unlabeled, args.num_test,
                                        seed=0, max_size=args.max_size, output_root=paths["nnUNet_raw"],
                                        dataset_name=name, verbose=False)
    add_area_classes(raws[813])
    for dataset_id in raws:
        plan_and_preprocess(dataset_id, ["2d"], num_processes=2, show_progress=False)

    runs = (("nnUNetTrainer_demo", 812, "supervised"), ("MeanTeacherTrainer_demo", 812, "Mean Teacher"),
            ("HermesTrainer_demo", 812, "Hermes, segmentation-only"),
            ("HermesTrainer_demo", 813, "Hermes, proxy classes"))
    rows = []
    for trainer, dataset_id, label in runs:
        raw = raws[dataset_id]
        t = time.time()
        train(dataset_id, "2d", trainer, ["all"], device=args.device)
        seconds = time.time() - t
        model = get_output_folder(os.path.basename(raw), trainer, "nnUNetPlans", "2d")
        dice = predict_and_evaluate(model, join(raw, "imagesTs"), join(raw, "labelsTs"),
                                    join(workdir, "predictions", f"{trainer}_{dataset_id}"), args.device)
        accuracy = classification_accuracy(model, raw, args.device) if dataset_id == 813 else float("nan")
        rows.append((label, trainer, dice, accuracy, seconds))

    print(f"\nHC18, {args.num_labeled} labeled / {args.num_unlabeled} unlabeled / {args.num_test} test images, longer "
          f"side {args.max_size} px, {_demo_budget()} per training (the demo budget), fold all")
    print("\n| run | trainer | test Dice | test accuracy (proxy classes) | training wall time (s) |")
    print("|---|---|---|---|---|")
    for label, trainer, dice, accuracy, seconds in rows:
        print(f"| {label} | {trainer} | {dice:.4f} | {accuracy:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
