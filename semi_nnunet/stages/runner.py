"""Staged pseudo-label regeneration across folds.

For every fold f: train the initial trainer (stage 0), then for k = 1..stages: predict pseudo-labels for every
unlabeled case **with the stage k-1 model of the same fold** (so a fold's pseudo-labels never come from a model that
saw its validation cases), then train stage k (``<Trainer>_stage<k>``) on the fold's labeled cases + those
pseudo-labels. For fold ``all``, the pseudo-labels come from the ensemble of the previous stage's fold models (every
numbered fold whose model exists; the ``all`` model only when none does, with a warning).

The pipeline is a task graph (:mod:`semi_nnunet.tasks`) with dependencies per fold: fold 2's stage 2 starts as soon
as fold 2's stage-1 model exists, while fold 4's stage 1 may still train (with the ``ray`` or ``slurm`` executor; the
``local`` one runs the tasks one after the other). Fold ``all``'s pseudo-labels wait for the numbered folds' previous
stage. ``--stop-agreement`` adds one check per stage that waits for that stage's pseudo-labels of every fold.

Every task is skipped when its result exists (a final checkpoint, a complete pseudo-label folder), and an interrupted
training resumes from its latest checkpoint, so rerunning the same command continues the pipeline.
"""
import os
from typing import Dict, List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

from semi_nnunet.tasks.graph import Graph, Task
from semi_nnunet.tasks.executors import ExecutorOptions, run_graph
from semi_nnunet.trainers.training import Fold, TrainRequest, fold_outputs


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
    # fold 'all' has no validation cases, so its own model labelling its next stage leaks nothing: a note, not a warning
    print(f"Note: no numbered fold models in {model_folder}; fold 'all' is pseudo-labelled by its own model "
          "(train folds 0-4 first for an ensemble of the folds).")
    return ["all"]


def stage_trainer_name(trainer: str, stage: int) -> str:
    return trainer if stage == 0 else f"{trainer}_stage{stage}"


def _keys(fold: Fold, stage: int) -> Dict[str, str]:
    return {"train": f"train/stage{stage}/fold_{fold}", "pseudo": f"pseudo/stage{stage}/fold_{fold}",
            "agreement": f"agreement/stage{stage}"}


def _stop_file(initial_folder: str, stage: int) -> str:
    return join(initial_folder, "pseudo_labels", f"stage_{stage}", "stop_decision.json")


def _stopped_marker(initial_folder: str, stage: int, threshold: float) -> str:
    """Written only when the agreement check of ``stage`` stops the pipeline at this threshold: the later stages'
    tasks are done (a rerun with another ``--stop-agreement`` decides again)."""
    return join(initial_folder, "pseudo_labels", f"stage_{stage}", f"stopped_at_agreement_{threshold:g}.json")


def _stops_up_to(request: TrainRequest, initial_folder: str, stage: int) -> List[str]:
    """A task's ``skipped_if``: the stop markers of the agreement checks of stages 2..``stage``."""
    if request.stop_agreement is None:
        return []
    return [_stopped_marker(initial_folder, k, request.stop_agreement) for k in range(2, stage + 1)]


def stopped_at(request: TrainRequest, initial_folder: str, stage: int) -> Optional[int]:
    """With ``--stop-agreement``: the first stage <= ``stage`` whose agreement check decided to stop, else None."""
    if request.stop_agreement is None:
        return None
    for k in range(2, stage + 1):
        f = _stop_file(initial_folder, k)
        if isfile(f) and load_json(f).get("stop"):
            return k
    return None


def train_stage_fold(request: TrainRequest, fold: Fold, stage: int, initial_folder: str,
                     pretrained_weights: Optional[str] = None) -> Optional[str]:
    """Task: train stage ``stage`` of ``fold`` (nothing when ``--stop-agreement`` stopped the pipeline before it)."""
    from semi_nnunet.trainers.training import train_fold
    if stopped_at(request, initial_folder, stage) is not None:
        return None
    if pretrained_weights and not isfile(pretrained_weights):
        pretrained_weights = None
    return train_fold(request, fold, stage_trainer_name(request.trainer, stage), pretrained_weights)


def make_pseudo_labels(request: TrainRequest, fold: Fold, stage: int, initial_folder: str, model_folder: str,
                       all_folds: Sequence[Fold], unlabeled_folder: str, output: str) -> Optional[str]:
    """Task: stage ``stage``'s pseudo-labels of ``fold`` from the previous stage's model of the same fold (fold
    ``all``: the numbered folds' ensemble). Holds a lock beside the folder while it writes."""
    from semi_nnunet.stages.pseudo_labels import predict_pseudo_labels
    from semi_nnunet.tasks.locks import claim
    from semi_nnunet.trainers.lookup import find_trainer_class
    from semi_nnunet.trainers.unlabeled_data import unlabeled_identifiers
    if stopped_at(request, initial_folder, stage - 1) is not None:
        return None
    trainer_class = find_trainer_class(request.trainer)
    with claim(output.rstrip(os.sep) + ".lock", wait=5):
        source = pseudo_label_source_folds(model_folder, fold, all_folds)
        return predict_pseudo_labels(model_folder, source, unlabeled_folder, output,
                                     {"stage": stage, "fold": str(fold),
                                      "trainer": stage_trainer_name(request.trainer, stage - 1)},
                                     request.checkpoint_name, request.device, request.use_mirroring,
                                     unlabeled_identifiers(unlabeled_folder),
                                     save_maps=getattr(trainer_class, "pseudo_label_maps", False),
                                     confidence_threshold=getattr(trainer_class, "pseudo_confidence_threshold", None))


def check_agreement(request: TrainRequest, stage: int, initial_folder: str, previous: Dict[str, str],
                    current: Dict[str, str]) -> bool:
    """Task (``--stop-agreement``): do stage ``stage``'s pseudo-labels agree with the previous stage's (mean
    foreground Dice over cases and folds) at least that much? Writes the decision the stage's trainings read."""
    from semi_nnunet.stages.report import label_agreement
    from semi_nnunet.utilities.file_ops import save_json_atomic
    earlier = stopped_at(request, initial_folder, stage - 1)
    if earlier is not None:
        return True
    agreement = [label_agreement(previous[f], current[f]) for f in current]
    mean = sum(a for a in agreement if a is not None) / max(1, sum(a is not None for a in agreement))
    stop = mean >= request.stop_agreement
    if stop:
        print(f"Stopping before stage {stage}: its pseudo-labels agree with stage {stage - 1}'s at {mean:.4f} "
              f">= {request.stop_agreement} (--stop-agreement).")
    decision = {"stage": stage, "agreement": mean, "threshold": request.stop_agreement, "stop": stop}
    save_json_atomic(decision, _stop_file(initial_folder, stage))
    if stop:  # after the decision: a rerun finds the later stages' tasks done
        save_json_atomic(decision, _stopped_marker(initial_folder, stage, request.stop_agreement))
    return stop


def completed_stages(model_folders: Sequence[str], folds: Sequence[Fold]) -> int:
    """How many stages (from 0) have every fold trained."""
    n = 0
    for folder in model_folders:
        if not all(_is_trained(folder, f) for f in folds):
            break
        n += 1
    return n


def write_report(initial_folder: str, model_folders: Sequence[str], folds: Sequence[Fold],
                 pseudo: Dict[int, Dict[str, str]]) -> None:
    """Task: the stage report (stages.json, stages.png) over the stages every fold completed."""
    from semi_nnunet.stages.report import write_stage_report
    n = completed_stages(model_folders, folds)
    if n:
        write_stage_report(initial_folder, list(model_folders[:n]), folds, pseudo)


def stage_graph(request: TrainRequest, dataset_name: str, folds: Sequence[Fold], stages: int,
                unlabeled_folder: str) -> Graph:
    """The staged pipeline as tasks. Train tasks need one GPU on CUDA (``num_gpus`` with DDP)."""
    from semi_nnunet.trainers.lookup import find_trainer_class
    from semi_nnunet.trainers.pseudo_label import pseudo_label_folder
    from semi_nnunet.trainers.training import TrainRequest  # noqa: F401 (the type of the tasks' request)
    trainer, plans, configuration = request.trainer, request.plans_identifier, request.configuration
    ordered = sorted(folds, key=lambda f: (f == "all", str(f)))
    numbered = [f for f in ordered if f != "all"]
    initial = _model_folder(dataset_name, trainer, plans, configuration)
    request = request.but(stages=0, resume=True, folds=tuple(folds))
    graph = Graph(f"{trainer} stages 0-{stages}")
    models, pseudo = [], {}
    gpus = request.gpus_per_task
    for k in range(stages + 1):
        name = stage_trainer_name(trainer, k)
        if k:
            find_trainer_class(name)
        model = _model_folder(dataset_name, name, plans, configuration)
        previous = models[-1] if models else None
        if k:
            pseudo[k] = {}
            for f in ordered:
                output = pseudo_label_folder(dataset_name, trainer, plans, configuration, k, f)
                pseudo[k][str(f)] = output
                sources = [f] if f != "all" else numbered or ["all"]
                graph.add(Task(_keys(f, k)["pseudo"], "semi_nnunet.stages.runner:make_pseudo_labels",
                               dict(request=request, fold=f, stage=k, initial_folder=initial, model_folder=previous,
                                    all_folds=list(folds), unlabeled_folder=unlabeled_folder, output=output),
                               deps=[_keys(g, k - 1)["train"] for g in sources],
                               outputs=[join(output, "provenance.json")], gpus=min(gpus, 1), cost=0.2,
                               skipped_if=_stops_up_to(request, initial, k - 1),
                               label=f"stage {k}: pseudo-labels for fold {f} from "
                                     f"{stage_trainer_name(trainer, k - 1)} fold(s) {', '.join(map(str, sources))} "
                                     f"-> {output}"))
            if request.stop_agreement is not None and k >= 2:
                graph.add(Task(_keys("", k)["agreement"], "semi_nnunet.stages.runner:check_agreement",
                               dict(request=request, stage=k, initial_folder=initial, previous=pseudo[k - 1],
                                    current=pseudo[k]),
                               deps=[_keys(f, k)["pseudo"] for f in ordered], cost=0.01,
                               skipped_if=_stops_up_to(request, initial, k - 1),
                               label=f"stage {k}: agreement of its pseudo-labels with stage {k - 1}'s"))
        for f in ordered:
            deps = [_keys(f, k)["pseudo"]] if k else []
            if k and request.stop_agreement is not None and k >= 2:
                deps.append(_keys("", k)["agreement"])
            pretrained = join(previous, f"fold_{f}", "checkpoint_final.pth") if request.finetune and k else None
            graph.add(Task(_keys(f, k)["train"], "semi_nnunet.stages.runner:train_stage_fold",
                           dict(request=request, fold=f, stage=k, initial_folder=initial,
                                pretrained_weights=pretrained),
                           deps=deps, outputs=fold_outputs(join(model, f"fold_{f}"), request), gpus=gpus,
                           skipped_if=_stops_up_to(request, initial, k),
                           label=f"stage {k}: train {name} fold {f}"))
        models.append(model)
    graph.add(Task("report", "semi_nnunet.stages.runner:write_report",
                   dict(initial_folder=initial, model_folders=models, folds=list(folds), pseudo=pseudo),
                   deps=[_keys(f, k)["train"] for k in range(stages + 1) for f in ordered], cpus=1, cost=0.01,
                   label=f"the stage report ({join(initial, 'stages.json')})"))
    graph.models = models
    return graph


def run_stages(request: TrainRequest, executor: Optional[ExecutorOptions] = None,
               dry_run: bool = False) -> List[str]:
    """Run (or continue) the staged pipeline of ``request.trainer``; returns the last completed stage's fold folders.

    ``dry_run`` prints the graph (what is done, what is to do) and runs nothing. ``request.stop_agreement`` stops
    early once the pseudo-labels of a stage agree with the previous stage's at least that much; ``request.finetune``
    starts each stage from the same fold's previous-stage model."""
    from semi_nnunet.planners.plan_and_preprocess_api import find_dataset_name, get_unlabeled_folder
    from semi_nnunet.trainers.lookup import find_trainer_class
    from semi_nnunet.trainers.training import folds_from_splits
    dataset_name = find_dataset_name(request.dataset)
    stages = find_trainer_class(request.trainer).num_stages if request.stages is None else request.stages
    folds = list(request.folds) if request.folds else folds_from_splits(dataset_name)
    unlabeled = get_unlabeled_folder(dataset_name, request.plans_identifier, request.configuration)
    graph = stage_graph(request, dataset_name, folds, stages, unlabeled)
    if dry_run:
        graph.print(f"Staged pipeline of {request.trainer} on {dataset_name} {request.configuration}, folds {folds}, "
                    f"{stages} stage(s)")
        return []
    for task in graph:
        if task.done():
            print(f"[done] {task.describe()}")
    run_graph(graph, executor)
    n = completed_stages(graph.models, folds)
    last = graph.models[max(n - 1, 0)]
    return [join(last, f"fold_{f}") for f in folds]
