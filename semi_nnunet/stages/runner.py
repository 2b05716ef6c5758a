"""Staged pseudo-label regeneration across folds.

For every fold f: train the initial trainer (stage 0), then for k = 1..stages: predict pseudo-labels for every
unlabeled case **with the stage k-1 model of the same fold** (so a fold's pseudo-labels never come from a model that
saw its validation cases), then train stage k (``<Trainer>_stage<k>``) on the fold's labeled cases + those
pseudo-labels. For fold ``all``, the pseudo-labels come from the ensemble of the previous stage's fold models (every
numbered fold whose model exists; the ``all`` model only when none does, with a warning).

Every step is skipped when its result exists (a final checkpoint, a complete pseudo-label folder), and an interrupted
training resumes from its latest checkpoint, so rerunning the same command continues the pipeline.
"""
from dataclasses import dataclass, field
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


@dataclass
class Step:
    """One unit of the staged pipeline: ``train`` a trainer on a fold, or make ``pseudo`` labels for a fold."""
    kind: str  # "train" or "pseudo"
    trainer: str
    fold: Fold
    stage: int
    source_folds: List[Fold] = field(default_factory=list)  # pseudo: folds of the previous stage's model
    model_folder: str = ""  # train: the model's folder; pseudo: the labelling model's folder
    output: str = ""  # pseudo: the pseudo-label folder

    def describe(self, done: bool) -> str:
        state = "done" if done else "to do"
        if self.kind == "train":
            return f"[{state}] stage {self.stage}: train {self.trainer} fold {self.fold}"
        return (f"[{state}] stage {self.stage}: pseudo-labels for fold {self.fold} from {self.trainer} "
                f"fold(s) {', '.join(map(str, self.source_folds))} -> {self.output}")


def plan_stages(dataset_name: str, configuration: str, trainer: str, folds: Sequence[Fold], stages: int,
                plans_identifier: str = "nnUNetPlans") -> List[Step]:
    """The steps of the pipeline in order: stage 0 for every fold, then per stage the pseudo-labels of every fold,
    then the trainings of every fold. Numbered folds come before ``all``, whose pseudo-labels need the numbered
    models."""
    from semi_nnunet.run.train_api import find_trainer_class
    from semi_nnunet.trainers.pseudo_label import pseudo_label_folder
    ordered = sorted(folds, key=lambda f: (f == "all", str(f)))
    steps = [Step("train", trainer, f, 0, model_folder=_model_folder(dataset_name, trainer, plans_identifier,
                                                                        configuration)) for f in ordered]
    previous = trainer
    for k in range(1, stages + 1):
        current = f"{trainer}_stage{k}"
        find_trainer_class(current)
        prev_folder = _model_folder(dataset_name, previous, plans_identifier, configuration)
        numbered = [g for g in folds if g != "all"]
        steps += [Step("pseudo", previous, f, k, [f] if f != "all" else numbered or ["all"], prev_folder,
                       pseudo_label_folder(dataset_name, trainer, plans_identifier, configuration, k, f))
                  for f in ordered]
        steps += [Step("train", current, f, k,
                       model_folder=_model_folder(dataset_name, current, plans_identifier, configuration))
                  for f in ordered]
        previous = current
    return steps


def step_done(step: Step, unlabeled_cases: Sequence[str]) -> bool:
    from semi_nnunet.stages.pseudo_labels import is_complete
    if step.kind == "train":
        return _is_trained(step.model_folder, step.fold)
    return is_complete(step.output, unlabeled_cases)


def _pretrained(step: Step, previous_model: Optional[str]) -> Optional[str]:
    """Fine-tuning: stage k starts from the same fold's final stage k-1 checkpoint."""
    return join(previous_model, f"fold_{step.fold}", "checkpoint_final.pth") if previous_model else None


def device_slots(parallel: int, device: str, environ=None) -> List[Optional[str]]:
    """What each of ``parallel`` training processes gets as ``CUDA_VISIBLE_DEVICES``: on CUDA one GPU each, taken
    from the GPUs the user or the scheduler listed in ``CUDA_VISIBLE_DEVICES`` (never overwritten with others), else
    GPUs 0..parallel-1; None (the environment as it is) off CUDA. More processes than listed GPUs is an error."""
    if device != "cuda":
        return [None] * parallel
    import os
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return [str(i) for i in range(parallel)]
    ids = [d.strip() for d in visible.split(",") if d.strip()]
    if parallel > len(ids):
        from semi_nnunet.utilities.errors import InputError
        raise InputError(f"--parallel {parallel} trains one fold per GPU, but CUDA_VISIBLE_DEVICES={visible} lists "
                         f"{len(ids)} GPU(s).", "--parallel / CUDA_VISIBLE_DEVICES",
                         f"use --parallel {len(ids)} or list more GPUs.")
    return ids[:parallel]


def _train_in_subprocesses(steps: List[Step], dataset_name: str, configuration: str, plans_identifier: str,
                           device: str, parallel: int, previous_model: Optional[str] = None,
                           seed: Optional[int] = None) -> None:
    """Train ``steps`` (one stage, different folds) in up to ``parallel`` processes (one GPU each on CUDA)."""
    import os
    import queue
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor
    slots = queue.Queue()
    for slot in device_slots(parallel, device):
        slots.put(slot)

    def run(step: Step) -> None:
        slot = slots.get()
        try:
            env = dict(os.environ)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            latest = isfile(join(step.model_folder, f"fold_{step.fold}", "checkpoint_latest.pth"))
            cmd = [sys.executable, "-m", "semi_nnunet.run.train_entrypoint", dataset_name, configuration,
                   step.trainer, str(step.fold), "-p", plans_identifier, "-device", device, "--stages", "0"]
            pretrained = _pretrained(step, previous_model)
            extra = ["--c"] if latest else (["-pretrained_weights", pretrained] if pretrained else [])
            extra += ["--seed", str(seed)] if seed is not None else []
            subprocess.run(cmd + extra, env=env, check=True)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(run, step) for step in steps]:
            future.result()  # re-raise a failed fold


def run_stages(dataset, configuration: str, trainer: str, folds: Optional[Sequence[Fold]] = None,
               stages: Optional[int] = None, plans_identifier: str = "nnUNetPlans", device: str = "cuda",
               checkpoint_name: str = "checkpoint_final.pth", use_mirroring: bool = False, num_gpus: int = 1,
               train_fn=None, dry_run: bool = False, parallel: int = 1,
               stop_agreement: Optional[float] = None, finetune: bool = False,
               seed: Optional[int] = None) -> List[str]:
    """Run (or continue) the staged pipeline of ``trainer``; returns the final stage's model folders per fold.

    ``dry_run`` prints the plan (what is done, what is to do) and runs nothing. ``parallel`` trains the folds of a
    stage in that many processes (one GPU each with CUDA). ``stop_agreement`` stops early once the pseudo-labels of
    a stage agree with the previous stage's (mean foreground Dice over cases and folds) at least that much.
    ``seed``: passed to the trainings run in subprocesses (``train_fn`` binds its own)."""
    from semi_nnunet.planners.plan_and_preprocess_api import find_dataset_name, get_unlabeled_folder
    from semi_nnunet.run.train_api import find_trainer_class, folds_from_splits, train
    from semi_nnunet.stages.pseudo_labels import predict_pseudo_labels
    from semi_nnunet.stages.report import label_agreement, write_stage_report
    from semi_nnunet.trainers.unlabeled_data import unlabeled_identifiers
    train_fn = train_fn or train
    dataset_name = find_dataset_name(dataset)
    stages = find_trainer_class(trainer).num_stages if stages is None else stages
    folds = list(folds) if folds else folds_from_splits(dataset_name)
    unlabeled = get_unlabeled_folder(dataset_name, plans_identifier, configuration)
    cases = unlabeled_identifiers(unlabeled)
    steps = plan_stages(dataset_name, configuration, trainer, folds, stages, plans_identifier)
    if parallel > 1:
        device_slots(parallel, device)  # too few listed GPUs fails here, before anything trains
    if dry_run:
        print(f"Staged pipeline of {trainer} on {dataset_name} {configuration}, folds {folds}, {stages} stage(s):")
        for step in steps:
            print("  " + step.describe(step_done(step, cases)))
        return []
    pseudo = {}
    last_trained, completed = steps[0].model_folder, 0
    for k in range(stages + 1):
        stage_steps = [s for s in steps if s.stage == k]
        for step in (s for s in stage_steps if s.kind == "pseudo"):
            pseudo.setdefault(k, {})[str(step.fold)] = step.output
            if step_done(step, cases):
                print(step.describe(True))
                continue
            source = pseudo_label_source_folds(step.model_folder, step.fold, folds)
            predict_pseudo_labels(step.model_folder, source, unlabeled, step.output,
                                  {"stage": k, "fold": str(step.fold), "trainer": step.trainer},
                                  checkpoint_name, device, use_mirroring, cases,
                                  save_maps=getattr(find_trainer_class(trainer), "pseudo_label_maps", False),
                                  confidence_threshold=getattr(find_trainer_class(trainer),
                                                               "pseudo_confidence_threshold", None))
        if stop_agreement is not None and k >= 2:
            agreement = [label_agreement(pseudo[k - 1][f], pseudo[k][f]) for f in pseudo[k]]
            mean = sum(a for a in agreement if a is not None) / max(1, sum(a is not None for a in agreement))
            if mean >= stop_agreement:
                print(f"Stopping before stage {k}: its pseudo-labels agree with stage {k - 1}'s at {mean:.4f} "
                      f">= {stop_agreement} (--stop-agreement).")
                break
        todo = [s for s in stage_steps if s.kind == "train" and not step_done(s, cases)]
        previous_model = last_trained if finetune and k > 0 else None
        for step in (s for s in stage_steps if s.kind == "train" and s not in todo):
            print(step.describe(True))
        if parallel > 1 and len(todo) > 1:
            _train_in_subprocesses(todo, dataset_name, configuration, plans_identifier, device, parallel,
                                   previous_model, seed)
        else:
            for step in todo:
                latest = isfile(join(step.model_folder, f"fold_{step.fold}", "checkpoint_latest.pth"))
                train_fn(dataset_name, configuration, step.trainer, [step.fold], plans_identifier, device,
                         continue_training=latest, num_gpus=num_gpus,
                         pretrained_weights=None if latest else _pretrained(step, previous_model))
        last_trained, completed = stage_steps[-1].model_folder, k
    models = [s.model_folder for s in steps if s.kind == "train" and s.fold == steps[0].fold]
    write_stage_report(steps[0].model_folder, models[:completed + 1], folds, pseudo)
    return [join(last_trained, f"fold_{f}") for f in folds]
