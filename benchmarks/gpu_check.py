"""The one-shot GPU check: every trainer for a few dozen iterations on CUDA with AMP, step-time ratios, HCO's cost,
peak GPU memory, and 5-fold prediction against stock nnUNetv2_predict, printed as a Markdown block for
documentation/benchmarks.md. Sized to run in under 8 minutes on one GPU.

    python benchmarks/gpu_check.py --hippocampus $DATA/Hippocampus_MSD_Task04 -o gpu_check.md
    python benchmarks/gpu_check.py -device cpu --quick --synthetic-3d      # CI: the same code paths on a CPU

2D, on the bundled HC18 demo subset (given two image classes by head size, so that Hermes trains its classifier):
nnUNetTrainer, Mean Teacher, Semi-CervixSeg, Hermes with classes, SynFoC with a randomly initialised ViT-B-sized SAM
at 512 px (timing and memory only: no MedSAM weights on the machine), UniMatch, and each semi-supervised one with
HCO (``_HCO``). 3D, on MSD Hippocampus (or a synthetic 3D set with ``--synthetic-3d``): the same minus the 2D-only
Hermes and SynFoC. A few batches are drawn once and cached; timing rounds alternate between the trainers so all see
the same machine state (nnU-Net's AMP on CUDA: GradScaler + float16 autocast; ``nnUNet_compile`` off, so that
nineteen compilations do not eat the budget). Peak memory: the largest allocation while the trainer was built and
warmed up, above what was allocated before (so the trainers kept alive for the alternating rounds do not count).
With ``--quick`` (CPU): 2 iterations, 1 round, the random tiny SAM instead of ViT-B.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predict_ensemble import compare_predictions  # noqa: E402
from step_time import make_trainer  # noqa: E402

SEMI_2D = ["MeanTeacherTrainer", "SemiCervixTrainer", "HermesTrainer", "SynFoCTrainer_randomViTB", "UniMatchTrainer"]
SEMI_3D = ["MeanTeacherTrainer", "SemiCervixTrainer", "UniMatchTrainer"]


def add_image_classes(raw: str) -> None:
    """Give each labeled case of a 2D raw dataset a class, "large" when its foreground covers more than the median
    share of the image: Hermes then trains its classification branch (the demo data has no classes of its own)."""
    from PIL import Image
    ds = load_json(join(raw, "dataset.json"))
    if "image_classes" in ds:
        return
    folder = join(raw, "labelsTr")
    share = {f[:-len(ds["file_ending"])]: float((np.asarray(Image.open(join(folder, f))) > 0).mean())
             for f in sorted(os.listdir(folder)) if f.endswith(ds["file_ending"])}
    median = float(np.median(list(share.values())))
    save_json({**ds, "class_names": {"0": "small", "1": "large"},
               "image_classes": {k: int(v > median) for k, v in share.items()}}, join(raw, "dataset.json"))


def prepare(workdir: str, hippocampus, synthetic_3d: bool, num_processes: int):
    """[(dataset id, dataset name, raw folder, configuration)]: the demo in 2D, and a 3D dataset when asked for."""
    from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset, set_nnunet_paths
    from semi_nnunet.demo_api import convert_demo_data
    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    paths = set_nnunet_paths(workdir)
    raw = convert_demo_data(paths["nnUNet_raw"], 993)
    add_image_classes(raw)
    plan_and_preprocess(993, ["2d"], num_processes=num_processes, show_progress=False)
    cases = [(993, os.path.basename(raw), raw, "2d")]
    if hippocampus or synthetic_3d:
        if hippocampus:
            from semi_nnunet.dataset_conversion.msd_hippocampus import convert_msd_hippocampus
            raw3 = join(paths["nnUNet_raw"], "Dataset994_Hippocampus")
            if not os.path.isdir(raw3):
                raw3 = convert_msd_hippocampus(hippocampus, 994, 20, 20, 0, output_root=paths["nnUNet_raw"],
                                               verbose=False)
        else:
            raw3 = join(paths["nnUNet_raw"], "Dataset994_Synthetic3D")
            if not os.path.isdir(raw3):
                raw3 = make_synthetic_dataset(paths["nnUNet_raw"], 994, dim=3, num_labeled=6, num_unlabeled=4)
        plan_and_preprocess(994, ["3d_fullres"], num_processes=num_processes, show_progress=False)
        cases.append((994, os.path.basename(raw3), raw3, "3d_fullres"))
    return cases


def trainer_name(name: str, quick: bool) -> str:
    """The class a row times: with ``--quick`` SynFoC's ViT-B-sized SAM becomes the tiny one."""
    return name.replace("SynFoCTrainer_randomViTB", "SynFoCTrainer_tinySAM") if quick else name


def memory(device: str):
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def build(name: str, dataset: str, configuration: str, device: str, quick: bool):
    """The trainer set up for timing (loaders started, a few batches cached) and its peak memory in MiB."""
    before = memory(device)
    if before is not None:
        torch.cuda.reset_peak_memory_stats()
    trainer, batches = make_trainer(trainer_name(name, quick), dataset, configuration, device)
    for _ in range(2):  # warm-up (cuDNN autotuning, lazy allocations)
        trainer.train_step(next(batches))
    peak = None
    if before is not None:
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    return trainer, batches, peak


def time_all(names, dataset: str, configuration: str, device: str, iters: int, rounds: int, quick: bool) -> dict:
    built = {}
    for n in names:
        t = time.perf_counter()
        built[n] = build(n, dataset, configuration, device, quick)
        print(f"  {configuration} {n}: set up in {time.perf_counter() - t:.0f} s", flush=True)
    times = {n: [] for n in names}
    for _ in range(rounds):
        for n, (trainer, batches, _) in built.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(iters):
                trainer.train_step(next(batches))
            if device == "cuda":
                torch.cuda.synchronize()
            times[n].append((time.perf_counter() - t) / iters)
    out = {n: {"s_per_it": statistics.median(times[n]), "peak_mib": built[n][2]} for n in names}
    built.clear()  # single-threaded loaders (nnUNet_n_proc_DA=0): nothing else to stop
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def markdown(meta: dict, rows: dict, prediction) -> str:
    lines = [f"GPU check, {meta['date']}, {meta['device_name']} ({meta['device']}), torch {meta['torch']}, nnU-Net "
             f"{meta['nnunet']}, {meta['iters']} iterations x {meta['rounds']} rounds per trainer (median), AMP "
             f"{'on' if meta['device'] == 'cuda' else 'off (CPU)'}; SynFoC's SAM: {meta['sam']}; total "
             f"{meta['wall_s']:.0f} s.", "",
             "| config | trainer | s / it | vs nnUNetTrainer | HCO / base | peak memory (MiB) |",
             "|---|---|---|---|---|---|"]
    for config, result in rows.items():
        base = result["nnUNetTrainer"]["s_per_it"]
        for name, r in result.items():
            hco = "-"
            if name.endswith("_HCO") and name[:-4] in result:
                hco = f"{r['s_per_it'] / result[name[:-4]]['s_per_it']:.3f}"
            peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            lines.append(f"| {config} | {name} | {r['s_per_it']:.4f} | {r['s_per_it'] / base:.2f} | {hco} | {peak} |")
    if prediction:
        lines += ["", prediction]
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--hippocampus", help="MSD Task04 folder: the 3D rows")
    parser.add_argument("--synthetic-3d", action="store_true", help="3D rows on a synthetic dataset instead")
    parser.add_argument("--iters", type=int, default=None, help="iterations per timing round (default 30; 2 quick)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 3; 1 quick)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke mode: few iterations, the tiny SAM")
    parser.add_argument("--no-predict", action="store_true", help="leave out the 5-fold prediction comparison")
    parser.add_argument("--workdir", help="datasets and models (reused when given again; default: temporary)")
    parser.add_argument("-o", "--output", help="also write the Markdown block (and a .json beside it) here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("-device cuda, but no CUDA GPU is visible; use -device cpu --quick for the CPU check")
    iters = args.iters or (2 if args.quick else 30)
    rounds = args.rounds or (1 if args.quick else 3)
    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ["nnUNet_compile"] = "false"
    start = time.perf_counter()
    workdir = args.workdir or tempfile.mkdtemp(prefix="gpu_check_")
    cases = prepare(workdir, args.hippocampus, args.synthetic_3d, 2 if args.quick else 8)
    rows = {}
    for dataset_id, dataset, raw, configuration in cases:
        semi = SEMI_2D if configuration == "2d" else SEMI_3D
        names = ["nnUNetTrainer"] + [n for s in semi for n in (s, f"{s}_HCO")]
        rows[configuration] = time_all(names, dataset, configuration, args.device, iters, rounds, args.quick)
    prediction = None
    if not args.no_predict:
        d_id, _, raw, _ = cases[0]
        prediction = compare_predictions(workdir, d_id, raw, "nnUNetTrainer_2epochs_2it", args.device, repeats=1)
    from importlib.metadata import version
    meta = {"date": time.strftime("%Y-%m-%d"), "device": args.device, "torch": torch.__version__,
            "nnunet": version("nnunetv2"), "iters": iters, "rounds": rounds,
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "CPU",
            "sam": "random tiny SAM (--quick)" if args.quick else "random ViT-B at 512 px",
            "wall_s": time.perf_counter() - start}
    text = markdown(meta, rows, prediction)
    print("\n" + text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
        with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return text


if __name__ == "__main__":
    main()
