"""How far HCO moves the weights per step compared with its base optimizer: the factor of the step-size control.

    python benchmarks/hco_step_size.py                          # Mean Teacher vs Mean Teacher + HCO, HC18 demo, 2d
    python benchmarks/hco_step_size.py --trainer MeanTeacherTrainer --steps 60

Both trainers start from the same weights (same seed) and take the same cached batches; every step's update norm
(the L2 norm over all parameters of what the optimizer step moved them, the trainers' own ``update_norm``) is
recorded. The ratio of the medians is the factor ``F`` of the control ``<Trainer>_lrxF``: the base optimizer at
HCO's effective step, so that "X vs X_HCO" separates HCO's gating of the unlabeled gradient from a larger step.
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_time import make_trainer, prepare_datasets  # noqa: E402


def update_norms(name: str, dataset: str, configuration: str, steps: int, device: str, seed: int = 0):
    torch.manual_seed(seed)
    trainer, batches = make_trainer(name, dataset, configuration, device)
    trainer.update_norm_every = 1
    trainer._epoch_logs.clear()
    for _ in range(steps):
        trainer.train_step(next(batches))
    return list(trainer._epoch_logs["update_norm"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", default="MeanTeacherTrainer")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    dataset, configuration = prepare_datasets(workdir=args.workdir)[0]
    base = update_norms(args.trainer, dataset, configuration, args.steps, args.device)
    hco = update_norms(f"{args.trainer}_HCO", dataset, configuration, args.steps, args.device)
    half = args.steps // 2
    rows = [("all steps", base, hco), (f"steps {half + 1}-{args.steps}", base[half:], hco[half:])]
    print(f"| steps | {args.trainer}: median update norm | {args.trainer}_HCO | ratio |\n|---|---|---|---|")
    for label, b, h in rows:
        mb, mh = statistics.median(b), statistics.median(h)
        print(f"| {label} | {mb:.4g} | {mh:.4g} | {mh / mb:.2f} |")
    ratio = statistics.median(hco[half:]) / statistics.median(base[half:])
    print(f"\ncontrol: {args.trainer}_lrx{f'{ratio:.1f}'.replace('.', 'p')} (the base optimizer at HCO's step); "
          f"device {args.device}; {args.steps} steps from the same initial weights and batches")


if __name__ == "__main__":
    main()
