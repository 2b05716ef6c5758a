"""Staged pseudo-label regeneration across folds.

For every fold f: train the initial trainer (stage 0), then for k = 1..stages: predict pseudo-labels for every
unlabeled case **with the stage k-1 model of the same fold** (so a fold's pseudo-labels never come from a model that
saw its validation cases), then train stage k (``<Trainer>_stage<k>``) on the fold's labeled cases + those
pseudo-labels. For fold ``all``, the pseudo-labels come from the ensemble of the previous stage's fold models (every
numbered fold whose model exists; the ``all`` model only when none does, with a warning).

Every step is skipped when its result exists (a final checkpoint, a complete pseudo-label folder), and an interrupted
training resumes from its latest checkpoint, so rerunning the same command continues the pipeline.
"""
from typing import List, Optional, Sequence, Union

from batchgenerators.utilities.file_and_folder_operations import isfile, join

Fold = Union[int, str]


def _model_folder(dataset_name: str, trainer: str, plans: str, configuration: str) -> str:
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    return get_output_folder(dataset_name, trainer, plans, configuration)


def _is_trained(model_folder: str, fold: Fold) -> bool:
    return isfile(join(model_folder, f"fold_{fold}", "checkpoint_final.pth"))


def pseudo_label_source_folds(model_folder: str, fold: Fold, all_folds: Sequence[Fold]) -> List[Fold]:
    """The folds whose models label fold ``fold``'s next stage: the same fold; for ``all``, the numbered folds."""
    if fold != "all":
        return [fold]
    numbered = [f for f in all_folds if f != "all" and _is_trained(model_folder, f)]
    if numbered:
        return numbered
    print(f"WARNING: no numbered fold models in {model_folder}; fold 'all' is pseudo-labelled by its own model.")
    return ["all"]


def run_stages(dataset, configuration: str, trainer: str, folds: Optional[Sequence[Fold]] = None,
               stages: Optional[int] = None, plans_identifier: str = "nnUNetPlans", device: str = "cuda",
               checkpoint_name: str = "checkpoint_final.pth", use_mirroring: bool = False, num_gpus: int = 1,
               train_fn=None) -> List[str]:
    """Run (or continue) the staged pipeline of ``trainer``; returns the final stage's model folders per fold."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from semi_nnunet.planners.plan_and_preprocess_api import find_dataset_name, get_unlabeled_folder
    from semi_nnunet.run.train_api import find_trainer_class, folds_from_splits, train
    from semi_nnunet.stages.pseudo_labels import predict_pseudo_labels
    from semi_nnunet.trainers.pseudo_label import pseudo_label_folder
    train_fn = train_fn or train
    dataset_name = find_dataset_name(dataset)
    base = find_trainer_class(trainer)
    stages = base.num_stages if stages is None else stages
    folds = list(folds) if folds else folds_from_splits(dataset_name)
    PlansManager(join(str(nnUNet_preprocessed), dataset_name, plans_identifier + ".json"))  # fails early if missing
    unlabeled = get_unlabeled_folder(dataset_name, plans_identifier, configuration)

    def train_if_needed(name: str, fold: Fold) -> None:
        folder = _model_folder(dataset_name, name, plans_identifier, configuration)
        if _is_trained(folder, fold):
            print(f"{name} fold {fold}: already trained ({folder})")
            return
        latest = isfile(join(folder, f"fold_{fold}", "checkpoint_latest.pth"))
        train_fn(dataset_name, configuration, name, [fold], plans_identifier, device, continue_training=latest,
                 num_gpus=num_gpus)

    numbered_first = sorted(folds, key=lambda f: (f == "all", str(f)))  # 'all' needs the numbered models first
    for fold in numbered_first:
        train_if_needed(trainer, fold)
    previous = trainer
    for k in range(1, stages + 1):
        current = f"{trainer}_stage{k}"
        find_trainer_class(current)
        prev_folder = _model_folder(dataset_name, previous, plans_identifier, configuration)
        for fold in numbered_first:
            source = pseudo_label_source_folds(prev_folder, fold, folds)
            out = pseudo_label_folder(dataset_name, trainer, plans_identifier, configuration, k, fold)
            predict_pseudo_labels(prev_folder, source, unlabeled, out,
                                  {"stage": k, "fold": str(fold), "trainer": previous},
                                  checkpoint_name, device, use_mirroring)
            train_if_needed(current, fold)
        previous = current
    final = _model_folder(dataset_name, previous, plans_identifier, configuration)
    return [join(final, f"fold_{f}") for f in folds]
