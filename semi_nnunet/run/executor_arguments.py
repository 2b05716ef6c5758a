"""The ``--executor`` options that semi_nnUNet_train, semi_nnUNet_benchmark and semi_nnUNet_predict share."""
import argparse

from semi_nnunet.tasks.executors import EXECUTORS, ExecutorOptions
from semi_nnunet.utilities.errors import InputError


def _flag(name: str):
    """``--slurm-time`` and nnU-Net-style ``--slurm_time``, both."""
    return (name, "--" + name[2:].replace("-", "_")) if "-" in name[2:] else (name,)


def add_executor_arguments(parser: argparse.ArgumentParser, parallel_help: str) -> None:
    group = parser.add_argument_group("where the tasks run (documentation/cluster.md)")
    group.add_argument("--executor", default="local", choices=EXECUTORS,
                       help="local (default): here, one task after the other; ray: a local Ray instance, or the "
                            "cluster of --ray-address (pip install 'semi_nnunet[ray]'); slurm: one Slurm job per "
                            "task through submitit (pip install 'semi_nnunet[slurm]')")
    group.add_argument("--parallel", type=int, default=1, help=parallel_help)
    group.add_argument(*_flag("--ray-address"), dest="ray_address", default=None,
                       help="join this Ray cluster (e.g. auto, or ray://head:10001) instead of starting one")
    group.add_argument(*_flag("--max-retries"), dest="max_retries", type=int, default=3,
                       help="ray: how often a task whose process died is retried (default 3)")
    group.add_argument(*_flag("--slurm-partition"), dest="slurm_partition", default=None)
    group.add_argument(*_flag("--slurm-time"), dest="slurm_time", default=None,
                       help="time limit per job: minutes, HH:MM:SS or D-HH:MM:SS (default 1-00:00:00); a job that "
                            "reaches it saves its checkpoint and is requeued")
    group.add_argument(*_flag("--slurm-gpus"), dest="slurm_gpus", type=int, default=None,
                       help="GPUs per training job (default: 1 with -device cuda, else 0)")
    group.add_argument(*_flag("--slurm-cpus"), dest="slurm_cpus", type=int, default=None,
                       help="CPUs per job (default 1)")
    group.add_argument(*_flag("--slurm-option"), dest="slurm_option", action="append", default=[],
                       metavar="KEY=VALUE", help="any other sbatch option, e.g. --slurm-option mem=32G "
                                                 "--slurm-option account=myproject (repeatable)")
    group.add_argument(*_flag("--slurm-folder"), dest="slurm_folder", default=None,
                       help="where submitit keeps the job files and logs (default ./semi_nnunet_slurm)")
    group.add_argument(*_flag("--slurm-signal-s"), dest="slurm_signal_s", type=int, default=120,
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
