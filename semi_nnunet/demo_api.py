"""The demo: bundled HC18 subset -> convert -> plan and preprocess -> train -> predict the test images -> Dice.

The bundled images are the label-efficiency benchmark's HC18 setting (5 labeled, 295 unlabeled, 100 test images at
64 px; see semi_nnunet.dataset_conversion.make_demo_data) and the demo's budget is one the benchmark measured with
several training seeds (DEMO_BUDGET_SUMMARY), so the demo's pair of numbers is one more seed of a measured grid.
Everything lands in one working folder (nnU-Net's three folders inside it). A rerun skips every step that is done.
"""
import os
import time
from typing import Dict, Sequence

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

DEMO_DATA = join(os.path.dirname(os.path.abspath(__file__)), "demo_data", "HC18_demo")
DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = "HC18Demo"
# The supervised baseline and the method the multi-seed benchmark shows best (BENCHMARK_SUMMARY; a test keeps the two
# in agreement), both on the demo's budget.
DEFAULT_TRAINERS = ("nnUNetTrainer_demo", "HermesTrainer_HCO_demo")
# The headline benchmark's summary, refreshed with semi_nnunet.benchmarking.report.write_summary from the results.json
# it names (documentation/benchmarks/); the demo prints it next to its own single short runs.
BENCHMARK_SUMMARY = join(os.path.dirname(os.path.abspath(__file__)), "demo_data", "benchmark_summary.json")
# The benchmark at the demo's own budget (nnUNetTrainer_demo's schedule) on the demo's own labeled subset: what the
# demo's single pair of runs is a sample of.
DEMO_BUDGET_SUMMARY = join(os.path.dirname(os.path.abspath(__file__)), "demo_data", "demo_budget_summary.json")


def convert_demo_data(raw_root: str, dataset_id: int = DEMO_DATASET_ID) -> str:
    """The bundled subset in the semi-supervised raw format (skipped when already there)."""
    from semi_nnunet.dataset_conversion.folder_2d import convert_2d_folder
    folder = join(raw_root, f"Dataset{dataset_id:03d}_{DEMO_DATASET_NAME}")
    if isfile(join(folder, "dataset.json")):
        return folder
    return convert_2d_folder(join(DEMO_DATA, "labeled", "images"), join(DEMO_DATA, "labeled", "masks"),
                             dataset_id, DEMO_DATASET_NAME, unlabeled_dir=join(DEMO_DATA, "unlabeled"),
                             test_images_dir=join(DEMO_DATA, "test", "images"),
                             test_masks_dir=join(DEMO_DATA, "test", "masks"), label_names={0: "background", 1: "head"},
                             output_root=raw_root)


def predict_and_evaluate(model_folder: str, images: str, labels: str, output: str, device: str = "cpu",
                         folds=("all",)) -> float:
    """Predict ``images`` as ``semi_nnUNet_predict`` does (nnU-Net's predictor, one progress bar) and return the mean
    foreground Dice against ``labels``."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from semi_nnunet.inference.models import Member
    from semi_nnunet.inference.predict_api import predict
    predict(images, output, [Member(model_folder, list(folds))], device=device, on_device=device != "cpu")
    dataset_json = load_json(join(model_folder, "dataset.json"))
    labels_list = [v for v in dataset_json["labels"].values() if v != 0]
    rw = determine_reader_writer_from_dataset_json(dataset_json, verbose=False)()
    metrics = compute_metrics_on_folder(labels, output, join(output, "summary.json"), rw, dataset_json["file_ending"],
                                        labels_list, num_processes=1)
    return float(metrics["foreground_mean"]["Dice"])


def benchmark_context(scores: Dict[str, float]) -> str:
    """What the demo's numbers mean: each is one short training with one seed, a sample of the benchmark at the demo's
    budget (several training seeds on the same data), followed by the converged benchmark."""
    from semi_nnunet.benchmarking.report import best_method, reliably_ahead, summary_text
    demo = load_json(DEMO_BUDGET_SUMMARY)
    summ = load_json(BENCHMARK_SUMMARY)
    label = demo["rows"][0]["labeled"]
    lines = ["", "Each number above is ONE training (one seed): two runs of the same trainer differ by up to 1.5 "
             "Dice points at this budget, so the pair alone does not tell which method is better. The benchmark at "
             "the demo's own budget, on these same images, with several training seeds (paired differences with "
             f"bootstrap intervals; see documentation/benchmarks.md, raw results in {demo['source']}):", "",
             summary_text(demo), ""]
    methods = [t[:-len("_demo")] for t in scores if t.endswith("_demo") and t != "nnUNetTrainer_demo"]
    for method in methods:
        row = next((r for r in demo["rows"] if r["method"] == method and r["labeled"] == label), None)
        if row is None:
            lines.append(f"{method} was not measured at the demo's budget.")
        elif reliably_ahead(demo, row):
            lines.append(f"At the demo's budget {method} is ahead of the supervised baseline in every seed "
                         f"({row['delta']:+.4f} Dice, interval above zero).")
        else:
            lines.append(f"At the demo's budget {method} is NOT ahead of the supervised baseline in every seed with "
                         f"an interval above zero ({row['delta']:+.4f} Dice, ahead in {row['ahead']} of "
                         f"{row['seeds']}).")
    lines += ["", "The converged benchmark (a longer budget, on the same kind of data; the numbers to quote):", "",
              summary_text(summ), ""]
    best = best_method(summ, summ["rows"][0]["labeled"])
    if best is None:
        lines.append(f"In this benchmark no semi-supervised method trained with all {len(summ['training_seeds'])} "
                     "training seeds is ahead of the supervised baseline in every seed with an interval above zero "
                     "(rows with fewer seeds are not finished).")
    else:
        lines.append(f"Best in this benchmark: {best} (ahead of the baseline in every seed, interval above zero)"
                     + ("." if summ["converged"] else "; measured before the baseline converged, so provisional."))
    return "\n".join(lines)


def run_demo(workdir: str = "semi_nnunet_demo", trainers: Sequence[str] = DEFAULT_TRAINERS, device: str = "cpu",
             num_processes: int = 2, verbose: bool = False) -> Dict[str, float]:
    """Run the whole demo in ``workdir``; returns test Dice per trainer and prints where everything is. The console
    shows one progress bar per training (nnU-Net's full log goes to each training's log file); ``verbose`` prints
    nnU-Net's log lines instead."""
    from semi_nnunet.utilities.environment import environment
    from semi_nnunet.dataset_conversion.synthetic import set_nnunet_paths
    workdir = os.path.abspath(workdir)
    paths = set_nnunet_paths(workdir)
    os.environ.setdefault("nnUNet_n_proc_DA", str(num_processes))
    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    from semi_nnunet.train_api import train

    start = time.time()
    print(f"[1/4] Converting the bundled HC18 subset into {paths['nnUNet_raw']}")
    raw = convert_demo_data(paths["nnUNet_raw"])
    print("[2/4] Planning and preprocessing (labeled and unlabeled cases)")
    plan_and_preprocess(DEMO_DATASET_ID, ["2d"], num_processes=num_processes)
    scores = {}
    for trainer in trainers:
        from nnunetv2.utilities.file_path_utilities import get_output_folder
        from semi_nnunet.inference.models import stage_trainer_name
        from semi_nnunet.trainers.lookup import find_trainer_class
        stages = getattr(find_trainer_class(trainer), "num_stages", 0)  # a staged method: its last stage's model
        model = get_output_folder(f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_DATASET_NAME}",
                                  stage_trainer_name(trainer, stages), "nnUNetPlans", "2d")
        if isfile(join(model, "fold_all", "checkpoint_final.pth")):
            print(f"[3/4] {trainer}: already trained ({model})")
        else:
            print(f"[3/4] Training {trainer} on the labeled cases (fold 'all', device {device}"
                  + (f"; stage 0, pseudo-labels of the unlabeled images, then {stages} pseudo-label stage(s)"
                     if stages else "") + f"; log: {join(model, 'fold_all', 'training_log_*.txt')})")
            with environment({} if verbose else {"SEMI_NNUNET_PROGRESS": "bar"}):
                train(DEMO_DATASET_ID, "2d", trainer, ["all"], device=device)
        print(f"[4/4] {trainer}: predicting the {len(os.listdir(join(raw, 'imagesTs')))} test images")
        scores[trainer] = predict_and_evaluate(model, join(raw, "imagesTs"), join(raw, "labelsTs"),
                                               join(workdir, "predictions", trainer), device)
    print(f"\nTest Dice (fetal head, {len(os.listdir(join(raw, 'imagesTs')))} held-out images):")
    for trainer, dice in scores.items():
        print(f"  {trainer:<28s} {dice:.4f}")
    print(benchmark_context(scores))
    print(f"\nDone in {time.time() - start:.0f} s. Results are in {workdir}: predictions/<trainer>/ "
          f"(summary.json holds per-case Dice), trained models in {paths['nnUNet_results']}.")
    return scores

