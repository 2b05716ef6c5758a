"""5-fold prediction: semi_nnUNet_predict vs stock nnUNetv2_predict -f 0 1 2 3 4, same models and images, one run.

    python benchmarks/predict_ensemble.py [--hc18 $DATA/HC18/training_set] [-device cpu] [--repeats 2]

Data: the bundled HC18 demo subset (20 labeled, 20 test images, longer side 160 px), or with ``--hc18`` a larger
converted HC18 split. Five folds of a short-schedule trainer are trained once (model quality does not matter here;
both commands load the same checkpoints). Both commands run as the user would run them (a fresh process each,
mirroring TTA on, nnU-Net's default worker counts for the stock command), alternating, ``--repeats`` times; the
fastest run of each is compared. Outputs: labels identical to stock with ``--average logits`` (nnU-Net's in-memory
fold averaging), and the fraction of identical pixels with our default ``--average probabilities``.
"""
import argparse
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join


def _timed(cmd, env) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t


def _labels(folder: str) -> dict:
    from PIL import Image
    return {f: np.asarray(Image.open(join(folder, f))) for f in sorted(os.listdir(folder)) if f.endswith(".png")}


def compare_predictions(workdir: str, dataset_id: int, raw: str, trainer: str, device: str, repeats: int) -> str:
    """Train 5 folds of ``trainer`` (once; reused), then time stock nnUNetv2_predict and semi_nnUNet_predict (logits
    and probability averaging) on ``raw``/imagesTs, alternating ``repeats`` times; returns the Markdown table."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from semi_nnunet.trainers.lookup import ext_trainer_path
    from semi_nnunet.train_api import train
    model = get_output_folder(dataset_id, trainer, "nnUNetPlans", "2d")
    todo = [f for f in range(5) if not os.path.isfile(join(model, f"fold_{f}", "checkpoint_final.pth"))]
    if todo:
        train(dataset_id, "2d", trainer, todo, device=device)
    images = join(raw, "imagesTs")
    n = len([f for f in os.listdir(images) if f.endswith(".png")])

    env = {**os.environ, "nnUNet_extTrainer": ext_trainer_path()}
    common = ["-i", images, "-d", str(dataset_id), "-c", "2d", "-tr", trainer, "-f", "0", "1", "2", "3", "4",
              "-device", device]
    runs = {"stock": [], "ours_logits": [], "ours": []}
    for r in range(repeats):
        for name in runs:
            out = join(workdir, f"{name}_{r}")
            shutil.rmtree(out, ignore_errors=True)
            if name == "stock":
                cmd = [shutil.which("nnUNetv2_predict"), *common, "-o", out]
            else:
                cmd = [shutil.which("semi_nnUNet_predict"), *common, "-o", out] + \
                    (["--average", "logits"] if name == "ours_logits" else [])
            runs[name].append(_timed(cmd, env))
            print(f"{name} run {r}: {runs[name][-1]:.1f} s", flush=True)
    stock, logits, probs = (_labels(join(workdir, f"{k}_0")) for k in ("stock", "ours_logits", "ours"))
    identical = all(np.array_equal(stock[f], logits[f]) for f in stock) and stock.keys() == logits.keys()
    agreement = np.mean([np.mean(stock[f] == probs[f]) for f in stock])
    best = {k: min(v) for k, v in runs.items()}
    lines = [f"{n} test images, 5 folds of {trainer}, mirroring TTA, device {device}, {repeats} alternating runs "
             f"each (fastest shown)", "",
             "| command | wall time (s) | s / image | ratio vs stock | labels vs stock |", "|---|---|---|---|---|",
             f"| nnUNetv2_predict -f 0 1 2 3 4 | {best['stock']:.1f} | {best['stock'] / n:.2f} | 1.00 | - |",
             f"| semi_nnUNet_predict --average logits | {best['ours_logits']:.1f} | {best['ours_logits'] / n:.2f} | "
             f"{best['ours_logits'] / best['stock']:.2f} | {'identical' if identical else 'DIFFERENT'} |",
             f"| semi_nnUNet_predict (probabilities) | {best['ours']:.1f} | {best['ours'] / n:.2f} | "
             f"{best['ours'] / best['stock']:.2f} | {100 * agreement:.3f} % pixels identical |", "",
             "all runs (s): " + ", ".join(f"{k} {['%.1f' % t for t in v]}" for k, v in runs.items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hc18", default=None, help="HC18 training_set folder (default: the bundled demo subset)")
    parser.add_argument("--num-test", type=int, default=60)
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trainer", default="nnUNetTrainer_2epochs_2it")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    workdir = args.workdir or tempfile.mkdtemp(prefix="predict_ensemble_")
    from semi_nnunet.dataset_conversion.synthetic import set_nnunet_paths
    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess

    paths = set_nnunet_paths(workdir)
    existing = [d for d in os.listdir(paths["nnUNet_raw"]) if d.startswith(("Dataset812_", "Dataset990_"))]
    if existing:  # a rerun on the same --workdir reuses the data and the trained folds
        dataset_id, raw = int(existing[0][7:10]), join(paths["nnUNet_raw"], existing[0])
    elif args.hc18:
        from semi_nnunet.dataset_conversion.hc18 import convert_hc18
        dataset_id = 812
        raw = convert_hc18(args.hc18, dataset_id, 20, 0, args.num_test, seed=0, max_size=160,
                           output_root=paths["nnUNet_raw"], verbose=False)
    else:
        from semi_nnunet.demo_api import convert_demo_data
        dataset_id = 990
        raw = convert_demo_data(paths["nnUNet_raw"], dataset_id)
    plan_and_preprocess(dataset_id, ["2d"], num_processes=2, show_progress=False)
    print(compare_predictions(workdir, dataset_id, raw, args.trainer, args.device, args.repeats))

if __name__ == "__main__":
    main()
