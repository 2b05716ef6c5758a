"""Prediction with in-memory ensembling of folds, trainers, stages and configurations, on nnU-Net's predictor.

Every model runs through ``nnUNetPredictor`` (sliding window, Gaussian weighting, mirroring test-time augmentation).
For each case: the image is preprocessed once per (plans, configuration); each member averages its folds in memory;
members sharing a configuration are averaged in the preprocessed space, different configurations after nnU-Net's
resampling back to the image. Nothing per fold is written.

``average``:
  ``probabilities`` (default): the mean of the folds' softmax (sigmoid for regions) outputs, the rule
  ``nnUNetv2_ensemble`` applies across models, so one rule holds for folds, trainers and configurations.
  ``logits``: the mean of the folds' logits, what ``nnUNetv2_predict -f 0 1 2 3 4`` does (identical labels to it).

Results are written atomically (staging folder + rename, the segmentation last), a rerun skips finished cases, and
``ensemble.json`` records what produced the folder: a rerun with other models into a used folder is refused instead
of mixing two ensembles (``overwrite=True`` redoes it).

Members with a classification head (trainers with ``classify``, e.g. Hermes) also give image classes: averaged over
their folds and members into ``classes.csv`` (semi_nnunet.inference.classification).
"""
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Sequence

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_pickle
from tqdm import tqdm

from semi_nnunet.inference.classification import class_names, classify, load_classifiers, write_classes_csv
from semi_nnunet.inference.models import Member, PredictionError, check_members
from semi_nnunet.utilities.file_ops import copy_atomic, save_json_atomic
from semi_nnunet.utilities.raw_dataset import list_cases, read_header_check

AVERAGES = ("probabilities", "logits")
STAGING = ".semi_nnunet_staging"
RECORD = "ensemble.json"
CLASSES_FOLDER = ".semi_nnunet_classes"  # per-case class probabilities (classes.csv is rebuilt from them)


def load_predictor(member: Member, device: torch.device, use_mirroring: bool = True, step_size: float = 0.5,
                   on_device: bool = True):
    """An ``nnUNetPredictor`` holding the member's network and the weights of each of its folds (``step_size``: the
    sliding window's step as a fraction of the patch, nnU-Net's 0.5; ``on_device=False``: nnU-Net's
    ``--not_on_device``, the prediction of a whole image kept in CPU memory)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from semi_nnunet.trainers.lookup import register_with_nnunet
    register_with_nnunet()  # nnU-Net's predictor finds our trainer classes by name
    if not 0 < step_size <= 1:
        raise PredictionError(f"-step_size {step_size} must be in (0, 1] (a fraction of the patch size).", "-step_size",
                              "use nnU-Net's default 0.5, or up to 1 for faster, less overlapping windows.")
    predictor = nnUNetPredictor(tile_step_size=step_size, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda" and on_device,
                                device=device, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(member.folder, tuple(member.folds), member.checkpoint)
    if predictor.configuration_manager.previous_stage_name is not None:
        raise PredictionError("Cascade configurations are not supported by semi_nnUNet_predict.", member.folder,
                              "predict cascades with nnUNetv2_predict, or ensemble 2d / 3d_fullres models.")
    return predictor


def to_logits(probabilities: torch.Tensor, label_manager, eps: float = 1e-7) -> torch.Tensor:
    """The inverse of the inference nonlinearity: ``log p`` for softmax (softmax(log p) = p), ``logit p`` for
    sigmoid, so averaged probabilities go through nnU-Net's export unchanged."""
    p = probabilities.float().clamp(eps, 1 - eps) if label_manager.has_regions else probabilities.float().clamp_min(eps)
    return torch.logit(p) if label_manager.has_regions else torch.log(p)


@torch.inference_mode()
def fold_average(predictor, data: torch.Tensor, average: str = "probabilities") -> torch.Tensor:
    """The mean over the predictor's folds of their probabilities (or logits), on the CPU, in the preprocessed
    space of ``data`` (C, *spatial)."""
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, not {average!r}")
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    total = None
    for params in predictor.list_of_parameters:
        network.load_state_dict(params)
        out = predictor.predict_sliding_window_return_logits(data).to("cpu")
        if average == "probabilities":  # float32 sums of probabilities
            out = predictor.label_manager.apply_inference_nonlin(out.float())
        # logits: summed in the predictor's output dtype (float16 in nnU-Net 2.8), exactly as nnUNetv2_predict does
        total = out if total is None else total.add_(out)
    return total.div_(len(predictor.list_of_parameters))


def input_cases(folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """``case -> channel files`` of ``folder``, every case complete and readable (errors name the file)."""
    if not isdir(folder):
        raise PredictionError("The input folder does not exist.", folder, "give the folder with the images to predict.")
    num_channels = len(dataset_json["channel_names"])
    cases = list_cases(folder, dataset_json["file_ending"], num_channels)
    if not cases:
        raise PredictionError(f"No images ending in {dataset_json['file_ending']} in the input folder.", folder,
                              f"put CASE_0000{dataset_json['file_ending']} files there (the models' file ending).")
    for case, files in cases.items():
        if len(files) != num_channels:
            raise PredictionError(f"Case '{case}' has {len(files)} channel file(s); the model needs {num_channels} "
                                  f"({list(dataset_json['channel_names'].values())}).", files[0],
                                  f"add the missing CASE_{len(files):04d}{dataset_json['file_ending']} file(s).")
        read_header_check(case, files, num_channels)
    return cases


class _Group:
    """Members that share plans and configuration, hence one preprocessing of each case."""

    def __init__(self, predictor):
        self.predictors = [predictor]
        self.plans_manager, self.configuration_manager = predictor.plans_manager, predictor.configuration_manager
        self.dataset_json, self.label_manager = predictor.dataset_json, predictor.label_manager

    def preprocess(self, files: List[str]):
        pre = self.configuration_manager.preprocessor_class(verbose=False)
        data, _, properties = pre.run_case(files, None, self.plans_manager, self.configuration_manager,
                                           self.dataset_json)
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), properties

    @torch.inference_mode()
    def predict(self, data: torch.Tensor, average: str) -> torch.Tensor:
        if len(self.predictors) == 1:
            return fold_average(self.predictors[0], data, average)
        return torch.stack([fold_average(p, data, average).float() for p in self.predictors]).mean(0)


def _group_key(predictor) -> str:
    plans = json.dumps(predictor.plans_manager.plans, sort_keys=True)
    return hashlib.sha1(plans.encode()).hexdigest() + predictor.configuration_manager.configuration.__repr__()


def _record(members: Sequence[Member], average: str, use_mirroring: bool, step_size: float = 0.5) -> dict:
    record = {"members": [m.describe() for m in members], "average": average, "mirroring": use_mirroring}
    if step_size != 0.5:  # nnU-Net's default is left out, so records written before -step_size still match
        record["step_size"] = step_size
    return record


def _check_output_folder(output_folder: str, record: dict, overwrite: bool) -> None:
    path = join(output_folder, RECORD)
    if isfile(path) and not overwrite:
        previous = load_json(path)
        if previous != record:
            raise PredictionError("The output folder holds predictions of another ensemble (different models, folds, "
                                  "checkpoint, averaging or TTA).", path,
                                  "write to a new output folder, or pass --overwrite to replace them.")


def predict(input_folder: str, output_folder: str, members: Sequence[Member], dataset=None,
            save_probabilities: bool = False, use_mirroring: bool = True, average: str = "probabilities",
            device: str = "cuda", overwrite: bool = False, show_progress: bool = True, num_parts: int = 1,
            part_id: int = 0, step_size: float = 0.5, on_device: bool = True) -> List[str]:
    """Predict every case of ``input_folder`` with the ensemble of ``members`` into ``output_folder``.
    Returns the cases predicted in this call (finished ones are skipped unless ``overwrite``).

    ``num_parts``/``part_id`` as in ``nnUNetv2_predict``: this call predicts every ``num_parts``-th case (sorted by
    name) from the ``part_id``-th, so N processes, GPUs or jobs share a large set; parts never touch each other's
    files."""
    if average not in AVERAGES:
        raise PredictionError(f"Unknown averaging '{average}'.", "--average", f"use one of {AVERAGES}.")
    check_part(num_parts, part_id)
    members = check_members(members, dataset)
    if os.path.abspath(input_folder) == os.path.abspath(output_folder):
        raise PredictionError("Input and output folder are the same.", output_folder,
                              "write predictions to a separate folder.")
    dataset_json = load_json(join(members[0].folder, "dataset.json"))
    ending = dataset_json["file_ending"]
    cases = input_cases(input_folder, dataset_json)
    record = _record(members, average, use_mirroring, step_size)
    _check_output_folder(output_folder, record, overwrite)
    record_id = hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]

    torch_device = torch.device(device)
    classifiers = [(m, load_classifiers(m, torch_device)) for m in members]
    classifiers = [(m, t) for m, t in classifiers if t]
    classes_folder = join(output_folder, CLASSES_FOLDER)

    def classified(case: str) -> bool:  # by this ensemble: a part of an --overwrite run leaves the others' old ones
        f = join(classes_folder, case + ".json")
        return isfile(f) and load_json(f).get("ensemble") == record_id

    def finished(case: str) -> bool:
        return isfile(join(output_folder, case + ending)) and (
            not save_probabilities or isfile(join(output_folder, case + ".npz"))) and (
            not classifiers or classified(case))
    mine = sorted(cases)[part_id::num_parts]
    todo = [c for c in mine if overwrite or not finished(c)]
    if overwrite and todo and isfile(join(output_folder, "classes.csv")):
        os.remove(join(output_folder, "classes.csv"))  # rebuilt once every case is classified again
    os.makedirs(output_folder, exist_ok=True)
    save_json_atomic(record, join(output_folder, RECORD))
    for name in ("dataset.json", "plans.json"):  # as nnUNetv2_predict does: nnUNetv2_ensemble reads them
        copy_atomic(join(members[0].folder, name), join(output_folder, name))
    if not todo:
        return []

    groups: Dict[str, _Group] = {}
    member_group = {}
    for m in members:
        predictor = load_predictor(m, torch_device, use_mirroring, step_size, on_device)
        key = _group_key(predictor)
        if key in groups:
            groups[key].predictors.append(predictor)
        else:
            groups[key] = _Group(predictor)
        member_group[id(m)] = list(groups).index(key)
    staging = join(output_folder, STAGING + (f"_part{part_id}" if num_parts > 1 else ""))
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    weights = [len(g.predictors) / len(members) for g in groups.values()]

    def preprocess(case):
        return [g.preprocess(cases[case]) for g in groups.values()]

    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        writing = []
        next_input = reader.submit(preprocess, todo[0])
        for i, case in enumerate(tqdm(todo, desc="Predicting", disable=not show_progress, unit="case")):
            inputs = next_input.result()
            if i + 1 < len(todo):
                next_input = reader.submit(preprocess, todo[i + 1])
            outputs = [g.predict(data, average) for g, (data, _) in zip(groups.values(), inputs)]
            if classifiers:
                probs = torch.stack([classify(t, inputs[member_group[id(m)]][0]) for m, t in classifiers]).mean(0)
                save_json_atomic({"probabilities": [float(v) for v in probs], "ensemble": record_id},
                                 join(classes_folder, case + ".json"))
            properties = [props for _, props in inputs]
            writing.append(writer.submit(_export, case, list(groups.values()), outputs, properties, weights,
                                         average, save_probabilities, staging, output_folder, ending,
                                         torch.get_num_threads()))
            while len(writing) > 2 or (writing and writing[0].done()):  # bounded queue; errors surface here
                writing.pop(0).result()
        for f in writing:
            f.result()
    shutil.rmtree(staging, ignore_errors=True)
    if classifiers and all(classified(c) for c in cases):  # the last part writes it, from one ensemble's classes
        rows = {c: load_json(join(classes_folder, c + ".json"))["probabilities"] for c in sorted(cases)}
        write_classes_csv(output_folder, rows, class_names(classifiers[0][1][0]))
    return todo


def check_part(num_parts: int, part_id: int) -> None:
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise PredictionError(f"-part_id {part_id} of -num_parts {num_parts}: parts are numbered 0..num_parts-1.",
                              "-num_parts / -part_id", "give -num_parts N (N >= 1) and -part_id 0..N-1.")


def predict_parts(input_folder: str, output_folder: str, members: Sequence[Member], num_parts: int,
                  executor=None, dataset=None, **options) -> None:
    """Predict a large set as ``num_parts`` tasks (one GPU each on CUDA) run by ``executor`` (Ray, Slurm: side by
    side; local: one after the other). ``options``: the other arguments of :func:`predict`."""
    from semi_nnunet.tasks.executors import run_graph
    from semi_nnunet.tasks.graph import Graph, Task
    check_part(num_parts, 0)
    members = check_members(members, dataset)  # bad models fail here, before any task starts
    graph = Graph(f"prediction of {input_folder}")
    gpus = 1 if options.get("device", "cuda") == "cuda" else 0
    for i in range(num_parts):
        graph.add(Task(f"predict/part{i}", "semi_nnunet.inference.predict_api:predict",
                       dict(input_folder=input_folder, output_folder=output_folder, members=list(members),
                            dataset=dataset, num_parts=num_parts, part_id=i, show_progress=False, **options),
                       gpus=gpus, label=f"predict part {i} of {num_parts} -> {output_folder}"))
    run_graph(graph, executor)


def _export(case: str, groups: List[_Group], outputs: List[torch.Tensor], properties: List[dict],
            weights: List[float], average: str, save_probabilities: bool, staging: str, output_folder: str,
            ending: str, threads: int) -> None:
    """Resample to the image, write into ``staging``, move into ``output_folder`` (segmentation last).
    nnU-Net's export sets torch's (process-wide) thread count: ``threads`` is the prediction's own, so a background
    export never changes the thread count under the network (which would change its floating-point sums)."""
    from nnunetv2.inference.export_prediction import (convert_predicted_logits_to_segmentation_with_correct_shape,
                                                      export_prediction_from_logits)
    truncated = join(staging, case)
    first = groups[0]
    if len(groups) == 1:  # one preprocessing space: nnU-Net's own export
        logits = outputs[0] if average == "logits" else to_logits(outputs[0], first.label_manager)
        export_prediction_from_logits(logits.numpy(), properties[0], first.configuration_manager,
                                      first.plans_manager, first.dataset_json, truncated, save_probabilities,
                                      num_threads_torch=threads)
    else:  # configurations differ: average the probabilities on the image grid
        total = None
        for g, out, props, w in zip(groups, outputs, properties, weights):
            logits = out if average == "logits" else to_logits(out, g.label_manager)
            _, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits.numpy(), g.plans_manager, g.configuration_manager, g.label_manager, props,
                return_probabilities=True, num_threads_torch=threads)
            total = probs * w if total is None else total + probs * w
        seg = first.label_manager.convert_probabilities_to_segmentation(total)
        seg = np.asarray(seg).astype(np.uint8 if len(first.label_manager.foreground_labels) < 255 else np.uint16)
        if save_probabilities:
            np.savez_compressed(truncated + ".npz", probabilities=total)
            save_pickle(properties[0], truncated + ".pkl")
        first.plans_manager.image_reader_writer_class().write_seg(seg, truncated + ending, properties[0])
    for suffix in (".npz", ".pkl", ending):
        if isfile(truncated + suffix):
            os.replace(truncated + suffix, join(output_folder, case + suffix))
