"""What every command's argument parsing shares: both spellings of long flags, and the ``--executor`` options of
semi_nnUNet_train, semi_nnUNet_benchmark and semi_nnUNet_predict."""
import argparse
from typing import List, Optional, Sequence

from semi_nnunet.tasks.executors import EXECUTORS, ExecutorOptions
from semi_nnunet.utilities.errors import InputError


def normalize_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> List[str]:
    """``--dry_run`` for ``--dry-run``, ``--save-probabilities`` for ``--save_probabilities``, ``-part-id`` for
    ``-part_id``: a flag the parser does not know is replaced by its other spelling when the parser knows that one
    (nnU-Net's commands use underscores, ours mostly hyphens; users type either)."""
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    known = set(parser._option_string_actions)  # every option string of the parser and its groups
    out = []
    for token in argv:
        flag, sep, value = token.partition("=")
        if flag.startswith("-") and flag not in known and len(flag) > 2:
            for other in (flag.replace("_", "-"), flag.replace("-", "_")):
                dashes = len(flag) - len(flag.lstrip("-"))
                other = flag[:dashes] + other[dashes:]
                if other in known:
                    token = other + sep + value
                    break
        out.append(token)
    return out


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return parser.parse_args(normalize_flags(parser, argv))


def add_executor_arguments(parser: argparse.ArgumentParser, parallel_help: str) -> None:
    group = parser.add_argument_group("where the tasks run (documentation/cluster.md)")
    group.add_argument("--executor", default="local", choices=EXECUTORS,
                       help="local (default): here, one task after the other; ray: a local Ray instance, or the "
                            "cluster of --ray-address (pip install 'semi_nnunet[ray]'); slurm: one Slurm job per "
                            "task through submitit (pip install 'semi_nnunet[slurm]')")
    group.add_argument("--parallel", type=int, default=1, help=parallel_help)
    group.add_argument("--ray-address", dest="ray_address", default=None,
                       help="join this Ray cluster (e.g. auto, or ray://head:10001) instead of starting one")
    group.add_argument("--max-retries", dest="max_retries", type=int, default=3,
                       help="ray: how often a task whose process died is retried (default 3)")
    group.add_argument("--slurm-partition", dest="slurm_partition", default=None)
    group.add_argument("--slurm-time", dest="slurm_time", default=None,
                       help="time limit per job: minutes, HH:MM:SS or D-HH:MM:SS (default 1-00:00:00); a job that "
                            "reaches it saves its checkpoint and is requeued")
    group.add_argument("--slurm-gpus", dest="slurm_gpus", type=int, default=None,
                       help="GPUs per training job (default: 1 with -device cuda, else 0)")
    group.add_argument("--slurm-cpus", dest="slurm_cpus", type=int, default=None,
                       help="CPUs per job (default 1)")
    group.add_argument("--slurm-option", dest="slurm_option", action="append", default=[],
                       metavar="KEY=VALUE", help="any other sbatch option, e.g. --slurm-option mem=32G "
                                                 "--slurm-option account=myproject (repeatable)")
    group.add_argument("--slurm-folder", dest="slurm_folder", default=None,
                       help="where submitit keeps the job files and logs (default ./semi_nnunet_slurm)")
    group.add_argument("--slurm-signal-s", dest="slurm_signal_s", type=int, default=120,
                       help="send USR1 this many seconds before the time limit (default 120)")


def executor_options(args: argparse.Namespace) -> ExecutorOptions:
    extra = {}
    for item in args.slurm_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--slurm-option {item} is not KEY=VALUE.", f"--slurm-option {item}",
                             "give sbatch options as KEY=VALUE, e.g. --slurm-option mem=32G.")
        extra[key.strip().lstrip("-")] = value
    return ExecutorOptions(args.executor, args.parallel, args.ray_address, args.max_retries, args.slurm_partition,
                           args.slurm_time, args.slurm_cpus, args.slurm_gpus, extra, args.slurm_folder,
                           args.slurm_signal_s)
