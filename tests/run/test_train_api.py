"""Finding trainers by class name and choosing folds, before any training starts."""
import pytest

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.lookup import TrainingError, ext_trainer_path, find_trainer_class
from semi_nnunet.train_api import train


def test_finds_our_trainers_and_nnunets():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from semi_nnunet.trainers.variants import nnUNetTrainer_demo
    assert find_trainer_class("nnUNetTrainer_demo") is nnUNetTrainer_demo
    assert find_trainer_class("nnUNetTrainer") is nnUNetTrainer


def test_unknown_trainer_lists_close_matches():
    with pytest.raises(TrainingError, match="Unknown trainer 'nnUNetTrainer_dem0' .close matches: nnUNetTrainer_demo"):
        find_trainer_class("nnUNetTrainer_dem0")


def test_stock_nnunet_finds_our_trainers_through_ext_path(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from semi_nnunet.trainers.variants import nnUNetTrainer_demo
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_path())
    # the very class object of our package: nnU-Net imports no second copy of the trainer module
    assert recursive_find_trainer_class_by_name("nnUNetTrainer_demo") is nnUNetTrainer_demo


def test_schedule_variant_sets_attributes_after_nnunet_init(nnunet_paths):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from semi_nnunet.trainers.variants import nnUNetTrainer_2epochs_2it
    assert "__init__" not in vars(nnUNetTrainer_2epochs_2it)  # a variant sets attributes, never copies __init__
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 932, dim=2, num_labeled=5, num_unlabeled=0)
    plan_and_preprocess(932, ["2d"], num_processes=1, show_progress=False, preprocess=False)
    pre = join(nnunet_paths["nnUNet_preprocessed"], "Dataset932_Synthetic2D")
    plans = {**load_json(join(pre, "nnUNetPlans.json")), "continue_training": False}  # as nnU-Net's runner adds
    trainer = nnUNetTrainer_2epochs_2it(plans, "2d", 0,
                                        load_json(join(pre, "dataset.json")), torch.device("cpu"))
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (2, 2, 1)
    assert trainer.my_init_kwargs["configuration"] == "2d"  # nnU-Net's own bookkeeping of the arguments still works


def test_bad_requests_fail_before_training(nnunet_paths):
    with pytest.raises(Exception, match="No dataset with id 931"):
        train(931, "2d", "nnUNetTrainer", device="cpu")
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 931, dim=2, num_labeled=5, num_unlabeled=2)
    with pytest.raises(TrainingError, match="(?s)plans are missing.*nnUNetPlans.json.*run semi_nnUNet_plan_and_pre"):
        train(931, "2d", "nnUNetTrainer", device="cpu")
    plan_and_preprocess(931, ["2d"], num_processes=1, show_progress=False)
    with pytest.raises(TrainingError,
                       match=r"(?s)Configuration '3d_fullres' is not in the plans \(available: \['2d'\]\).*Plans"):
        train(931, "3d_fullres", "nnUNetTrainer", device="cpu")
    with pytest.raises(TrainingError, match="Unknown trainer 'MeanTeecher'"):
        train(931, "2d", "MeanTeecher", device="cpu")
    with pytest.raises(TrainingError, match=r"(?s)Fold 7 is out of range: the splits file has folds 0..4.*folds 0..4"):
        train(931, "2d", "nnUNetTrainer", [7], device="cpu")
