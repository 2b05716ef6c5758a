"""Hermes end to end on CPU with image classes: plan -> train 2 epochs -> checkpoint (classifier beside the U-Net)
-> predict masks with nnU-Net's predictor -> resume into a longer run -> classify preprocessed test images."""
import math
import os

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.run.train_entrypoint import main as train_main
from semi_nnunet.trainers.hermes import HermesTrainer_2epochs_2it

TRAINER = "HermesTrainer_2epochs_2it"


class HermesTrainer_3epochs_2it(HermesTrainer_2epochs_2it):
    """The same run, one epoch longer: what a resumed run continues into."""
    schedule = {**HermesTrainer_2epochs_2it.schedule, "num_epochs": 3}


def _state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def test_2d_with_classes_train_resume_predict_classify(nnunet_paths, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 972, dim=2, num_labeled=5, num_unlabeled=3, num_test=2,
                           shape=(32, 32), image_classes=True)
    plan_and_preprocess(972, ["2d"], num_processes=1, show_progress=False)
    train_main(["972", "2d", TRAINER, "0", "-device", "cpu"])
    name = "Dataset972_Synthetic2D"
    model = join(nnunet_paths["nnUNet_results"], name, f"{TRAINER}__nnUNetPlans__2d")
    final = join(model, "fold_0", "checkpoint_final.pth")

    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2 and ckpt["semi_global_step"] == 4 and ckpt["teacher_weights"] is None
    aux = ckpt["auxiliary_weights"]
    for prefix in ("classifier.fc.", "classifier.attention.0.", "seg_consistency.", "pixel_head."):
        assert any(k.startswith(prefix) for k in aux), prefix
    assert not any(k.startswith(("classifier", "pixel_head")) for k in ckpt["network_weights"])
    for key in ("itc", "cls_sup", "seg_sup", "kappa", "tau"):
        assert len(ckpt["logging"][key]) == 2 and all(math.isfinite(v) for v in ckpt["logging"][key]), key
    log = [f for f in os.listdir(join(model, "fold_0")) if f.startswith("training_log")][0]
    with open(join(model, "fold_0", log)) as f:
        assert "Hermes: classification branch on, classes {0: 'small', 1: 'large'}" in f.read()

    # masks: nnU-Net's own predictor loads network_weights (the U-Net alone); in-process, no worker pools
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from PIL import Image

    from semi_nnunet.trainers.lookup import register_with_nnunet
    register_with_nnunet()
    raw = join(nnunet_paths["nnUNet_raw"], name)
    out = join(nnunet_paths["nnUNet_results"], "pred")
    os.makedirs(out)
    mask_predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False,
                                     allow_tqdm=False, use_mirroring=False)
    mask_predictor.initialize_from_trained_model_folder(model, use_folds=(0,))
    mask_predictor.predict_from_files_sequential(join(raw, "imagesTs"), out)
    for case in ("test000", "test001"):
        mask = np.asarray(Image.open(join(out, f"{case}.png")))
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1}

    # resume (what --c does) into a longer schedule: U-Net, classifier and counters restored, training continues
    from nnunetv2.run.run_training import maybe_load_checkpoint
    pre = join(nnunet_paths["nnUNet_preprocessed"], name)
    plans = {**load_json(join(pre, "nnUNetPlans.json")), "continue_training": True}
    trainer = HermesTrainer_3epochs_2it(plans, "2d", 0, load_json(join(pre, "dataset.json")), torch.device("cpu"))
    trainer.output_folder = join(model, "fold_0")  # the class name differs; point it at the trained run
    maybe_load_checkpoint(trainer, True, False, None)
    assert trainer.current_epoch == 2 and trainer.global_step == 4
    assert _state_equal(trainer.network.state_dict(), ckpt["network_weights"])
    assert _state_equal(trainer.auxiliary.state_dict(), aux)
    trainer.run_training()
    resumed = torch.load(final, map_location="cpu", weights_only=False)
    assert resumed["current_epoch"] == 3 and resumed["semi_global_step"] == 6
    assert len(resumed["logging"]["itc"]) == 3
    assert not torch.equal(resumed["auxiliary_weights"]["classifier.fc.weight"], aux["classifier.fc.weight"])

    # classes: what prediction does after initialize() + load_checkpoint(), on nnU-Net-preprocessed images
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans_manager = PlansManager(join(model, "plans.json"))
    dataset_json = load_json(join(model, "dataset.json"))
    predictor = HermesTrainer_2epochs_2it({**plans_manager.plans, "continue_training": False}, "2d", 0, dataset_json,
                                          torch.device("cpu"))
    predictor.initialize()
    predictor.load_checkpoint(final)
    assert predictor.has_classifier
    assert _state_equal(predictor.auxiliary.state_dict(), resumed["auxiliary_weights"])
    for case in ("test000", "test001"):
        data, _, _ = DefaultPreprocessor(verbose=False).run_case(
            [join(raw, "imagesTs", f"{case}_0000.png")], None, plans_manager,
            plans_manager.get_configuration("2d"), dataset_json)
        probs = predictor.classify(data)
        assert probs.shape == (2,) and abs(float(probs.sum()) - 1) < 1e-5
        assert torch.equal(predictor.classify(data), probs)  # eval mode: deterministic

    # semi_nnUNet_predict writes classes.csv (the classifier's probabilities) and semi_nnUNet_evaluate scores it
    import csv

    from semi_nnunet.evaluation.evaluate_api import evaluate
    from semi_nnunet.inference.models import Member
    from semi_nnunet.inference.predict_api import predict
    resumed["trainer_name"] = TRAINER  # the test-local 3-epoch class is unknown outside this file; same network
    torch.save(resumed, final)
    ours = join(nnunet_paths["nnUNet_results"], "pred_ours")
    predict(join(raw, "imagesTs"), ours, [Member(model, [0])], device="cpu", use_mirroring=False,
            show_progress=False)
    with open(join(ours, "classes.csv")) as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    truth = {}
    for case in ("test000", "test001"):
        data, _, _ = DefaultPreprocessor(verbose=False).run_case(
            [join(raw, "imagesTs", f"{case}_0000.png")], None, plans_manager,
            plans_manager.get_configuration("2d"), dataset_json)
        probs = predictor.classify(data)
        assert [float(rows[case]["p_small"]), float(rows[case]["p_large"])] == \
            [round(float(p), 6) for p in probs]
        assert int(rows[case]["predicted_class"]) == int(probs.argmax())
        label = np.asarray(Image.open(join(raw, "labelsTs", f"{case}.png")))
        truth[case] = int((label > 0).mean() > 0.1)  # the synthetic dataset's rule for "large"
    ref_classes = join(nnunet_paths["nnUNet_results"], "test_classes.csv")
    with open(ref_classes, "w") as f:
        f.write("case,class\n" + "".join(f"{c},{k}\n" for c, k in truth.items()))
    summary = evaluate(join(raw, "labelsTs"), ours, num_processes=1, ref_classes=ref_classes)
    expected = np.mean([int(rows[c]["predicted_class"]) == truth[c] for c in truth])
    assert summary["classification"]["accuracy"] == expected and summary["classification"]["n"] == 2

    # --overwrite in two parts with another ensemble (mirroring on): after part 0 alone no classes.csv mixes its
    # case with part 1's old one; part 1 then writes it from the new ensemble only
    for part in (0, 1):
        predict(join(raw, "imagesTs"), ours, [Member(model, [0])], device="cpu", use_mirroring=True,
                show_progress=False, overwrite=True, num_parts=2, part_id=part)
        assert os.path.isfile(join(ours, "classes.csv")) == (part == 1)
    with open(join(ours, "classes.csv")) as f:
        assert sorted(r["case"] for r in csv.DictReader(f)) == ["test000", "test001"]
