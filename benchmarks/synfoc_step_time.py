"""Time per training iteration: nnUNetTrainer vs SynFoC (tiny random SAM on CPU; ViT-B where a GPU is available).

    python benchmarks/synfoc_step_time.py                       # CPU: nnUNetTrainer vs SynFoCTrainer_tinySAM, short
    python benchmarks/synfoc_step_time.py -device cuda --vit-b  # GPU: adds SynFoCTrainer (ViT-B at 512)

Same set-up as ``benchmarks/step_time.py`` (bundled HC18 demo subset, 2d; cached batches, so the timing is the
update step alone: forward, backward, optimizer, both EMA teachers; alternating rounds; median). ``--vit-b`` times
the real architecture: with ``SEMI_NNUNET_MEDSAM_CHECKPOINT`` set it uses that checkpoint, otherwise it writes a
ViT-B state dict with **random** weights (segment_anything's ``build_sam_vit_b``) into the work folder — the cost of
a step does not depend on the weights. Keep the defaults short: this is a ratio, not a training.
"""
import argparse
import os
import sys

import torch
from batchgenerators.utilities.file_and_folder_operations import join

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_time import prepare_datasets, time_trainers  # noqa: E402  (the sibling benchmark's helpers)


def random_vit_b_checkpoint(workdir: str) -> str:
    from segment_anything.build_sam import build_sam_vit_b
    path = join(workdir, "random_vit_b_for_timing.pth")
    if not os.path.isfile(path):
        torch.save(build_sam_vit_b().state_dict(), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainer", "SynFoCTrainer_tinySAM"])
    parser.add_argument("--vit-b", action="store_true", help="also time SynFoCTrainer (SAM ViT-B at 512)")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    cases = prepare_datasets(None, args.workdir)
    trainers = list(args.trainers)
    if args.vit_b:
        from semi_nnunet.networks.sam import SAM_CHECKPOINT_ENV
        if not os.environ.get(SAM_CHECKPOINT_ENV):
            os.environ[SAM_CHECKPOINT_ENV] = random_vit_b_checkpoint(os.environ["nnUNet_results"])
        trainers.append("SynFoCTrainer")
    rows = []
    for dataset_name, configuration in cases:
        result = time_trainers(trainers, dataset_name, configuration, args.device, args.iters, args.rounds)
        base = result[trainers[0]]
        rows += [(dataset_name, configuration, n, s, s / base) for n, s in result.items()]
    print(f"\n| dataset | config | trainer | s / iteration | ratio vs {trainers[0]} |")
    print("|---|---|---|---|---|")
    for d, c, n, s, r in rows:
        print(f"| {d} | {c} | {n} | {s:.3f} | {r:.2f} |")
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPUs"
    print(f"\ndevice {args.device} ({name}); torch threads {torch.get_num_threads()}; "
          f"{args.rounds} rounds x {args.iters} iterations, median")
    if args.device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB (all trainers together)")


if __name__ == "__main__":
    main()
