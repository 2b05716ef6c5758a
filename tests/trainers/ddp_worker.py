"""One rank of test_ddp.py's two-process DDP run (gloo, CPU). Not a test module: test_ddp.py starts it twice.

    python ddp_worker.py SPEC.json      (env: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, nnU-Net's folders)

SPEC: {"dataset": name, "configuration": "2d", "fold": 0, "trainers": [...], "continue": bool,
       "num_epochs": int or null, "out": folder}. For each trainer the rank trains the shipped class through nnU-Net's
own DDP set-up (``dist.init_process_group`` -> trainer -> ``maybe_load_checkpoint`` -> ``run_training``, as
nnunetv2.run.run_training.run_ddp does) and writes ``<out>/<trainer>.rank<r>.pt``: student, teacher and auxiliary
weights, the logged curves, the step counter and which checkpoint files this rank wrote.

The only test-only code is the device shim: nnU-Net's DDP path assumes CUDA (it sets the device to ``cuda:<rank>``,
builds a CUDA GradScaler and passes ``device_ids=[rank]`` to DistributedDataParallel), so :func:`on_cpu` puts the
trainer back on the CPU after nnU-Net's ``__init__`` and the DDP wrapper gets no device ids. Everything else is the
shipped code.
"""
import json
import os
import sys

import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel


def on_cpu(cls: type) -> type:
    """``cls`` with nnU-Net's CUDA-only DDP device choice undone (same name, so the same output folder)."""
    from semi_nnunet.trainers.optimizers import HCOScaler

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # nnU-Net records its arguments by these names
        cls.__init__(self, plans, configuration, fold, dataset_json, device)
        self.device = torch.device("cpu")
        self.grad_scaler = None
        self._hco_scaler = HCOScaler(None)
    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})


def main(spec_file: str) -> None:
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import maybe_load_checkpoint

    from semi_nnunet.trainers.lookup import find_trainer_class, register_with_nnunet

    spec = load_json(spec_file)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
    nnunet_trainer_module.DDP = lambda module, device_ids=None, **kw: DistributedDataParallel(module, **kw)
    register_with_nnunet()
    saves = []
    save = torch.save

    def counting_save(obj, f, *args, **kwargs):
        saves.append(os.path.basename(str(f)))
        return save(obj, f, *args, **kwargs)
    torch.save = counting_save

    pre = join(str(nnUNet_preprocessed), spec["dataset"])
    plans, dataset_json = load_json(join(pre, "nnUNetPlans.json")), load_json(join(pre, "dataset.json"))
    for name in spec["trainers"]:
        cls = find_trainer_class(name)
        if spec.get("num_epochs"):
            cls = type(name, (cls,), {"schedule": {**cls.schedule, "num_epochs": spec["num_epochs"]},
                                      "__module__": cls.__module__})
        saves.clear()
        trainer = on_cpu(cls)({**plans, "continue_training": spec["continue"]}, spec["configuration"],
                              spec["fold"], dataset_json, torch.device("cpu"))
        maybe_load_checkpoint(trainer, spec["continue"], False, None)
        trainer.run_training()
        logging = trainer.logger.local_logger.my_fantastic_logging
        save({"is_ddp": trainer.is_ddp, "world_size": dist.get_world_size(), "epoch": trainer.current_epoch,
              "global_step": getattr(trainer, "global_step", None),
              "student": trainer.unwrapped_network().state_dict(),
              "teacher": trainer.teacher.state_dict() if getattr(trainer, "teacher", None) is not None else None,
              "auxiliary": trainer.auxiliary.state_dict() if getattr(trainer, "auxiliary", None) else None,
              "logs": {k: list(logging[k]) for k in trainer.log_keys + ("train_losses",) if k in logging},
              "saves": list(saves)},
             join(spec["out"], f"{name}.rank{rank}.pt"))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    print(json.dumps({"rank": os.environ["RANK"], "done": True}))
