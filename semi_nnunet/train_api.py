"""Training as a Python function: ``train`` one trainer on some folds (a staged trainer: its whole pipeline).

The request is checked whole before any fold starts (:func:`semi_nnunet.trainers.training.check_request`), then
turned into a task graph (one training per fold; the staged pipeline's per-fold stages) and run by the chosen
executor: in this process (``local``), on Ray or on Slurm (:mod:`semi_nnunet.tasks.executors`).
"""
from typing import List, Optional, Sequence, Union

from semi_nnunet.tasks.executors import ExecutorOptions, check_options, device_slots, run_graph
from semi_nnunet.tasks.graph import Graph, Task
from semi_nnunet.trainers.lookup import (TrainingError, ext_trainer_path, find_trainer_class,  # noqa: F401
                                         register_with_nnunet, with_optimizer)
from semi_nnunet.trainers.training import TrainRequest, check_request, fold_folder, fold_outputs


def fold_graph(request: TrainRequest, dataset_name: str, folds: Sequence) -> Graph:
    """One training task per fold (independent of each other)."""
    graph = Graph(f"{request.trainer} folds {', '.join(map(str, folds))}")
    always = request.only_run_validation or request.continue_training  # asked to run even when trained
    for f in folds:
        folder = fold_folder(dataset_name, request.trainer, request.plans_identifier, request.configuration, f)
        graph.add(Task(f"train/fold_{f}", "semi_nnunet.trainers.training:train_fold", dict(request=request, fold=f),
                       outputs=[] if always else fold_outputs(folder, request), gpus=request.gpus_per_task,
                       label=f"train {request.trainer} fold {f}"))
    return graph


def train(dataset: Union[int, str], configuration: str, trainer: str = "nnUNetTrainer",
          folds: Optional[Sequence[Union[int, str]]] = None, plans_identifier: str = "nnUNetPlans",
          device: str = "cuda", continue_training: bool = False, only_run_validation: bool = False,
          export_validation_probabilities: bool = False, num_gpus: int = 1,
          pretrained_weights: Optional[str] = None, val_with_best: bool = False,
          stages: Optional[int] = None, dry_run: bool = False, parallel: int = 1,
          stop_agreement: Optional[float] = None, finetune: bool = False, seed: Optional[int] = None,
          final_validation: bool = True, executor: Optional[ExecutorOptions] = None,
          disable_checkpointing: bool = False) -> List[str]:
    """Train ``trainer`` on the given folds (``None``: every fold of the splits). Returns the output folders.

    A staged trainer (``num_stages > 0``, e.g. SemiCervixTrainer) runs its whole pipeline: stage 0, pseudo-labels from
    each fold's own model, stage 1, ... (``stages`` overrides the count; 0 trains stage 0 only).

    A fold that has ``checkpoint_final.pth`` is done and skipped (``continue_training`` or ``only_run_validation``
    run it anyway, as nnU-Net's ``--c`` / ``--val``). ``executor`` chooses where the trainings run (default: here,
    one after the other); ``parallel`` > 1 is a local Ray instance with that many slots. With Ray or Slurm a fold
    that has a latest checkpoint continues from it, so a retried task or requeued job never starts again from
    scratch. ``seed``: seed Python, numpy and torch before each fold's trainer is built."""
    executor = executor or ExecutorOptions()
    if parallel > 1:
        executor = ExecutorOptions(**{**executor.__dict__, "parallel": parallel})
    check_options(executor)
    request = TrainRequest(dataset, configuration, trainer, tuple(folds) if folds else None, plans_identifier,
                           device, continue_training, executor.engine != "local", only_run_validation,
                           export_validation_probabilities, num_gpus, pretrained_weights, val_with_best, stages,
                           stop_agreement, finetune, seed, final_validation,
                           disable_checkpointing=disable_checkpointing)
    trainer_class, dataset_name, _, fold_list = check_request(
        request, dry_run, elsewhere=executor.engine == "slurm" or bool(executor.ray_address))
    if executor.parallel > 1:
        device_slots(executor.parallel, device)  # too few listed GPUs fails here, before anything trains
    n_stages = getattr(trainer_class, "num_stages", 0) if stages is None else stages
    if n_stages > 0 and not only_run_validation:
        from semi_nnunet.stages.runner import run_stages
        return run_stages(request.but(folds=tuple(fold_list), stages=n_stages), executor, dry_run)
    graph = fold_graph(request, dataset_name, fold_list)
    if dry_run:
        graph.print(f"Training {trainer} on {dataset_name} {configuration}")
        return []
    register_with_nnunet()
    for task in graph:
        if task.done():
            print(f"[done] {task.describe()}: it has checkpoint_final.pth (--c continues it, --val validates it "
                  f"again; move the fold folder away to train it from the beginning)")
    run_graph(graph, executor)
    return [fold_folder(dataset_name, trainer, plans_identifier, configuration, f) for f in fold_list]
