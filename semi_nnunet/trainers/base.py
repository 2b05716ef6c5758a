"""``SemiSupervisedTrainer``: the one base class every semi-supervised method subclasses.

It owns what methods share: the unlabeled loader (weak and strong views), the EMA teacher, ramp-up weights,
logging (training log and ``progress.png``), checkpointing of the extra state, and **the update step**. A method
file only computes losses:

* ``supervised_loss(labeled)`` — ground truth only; the default is nnU-Net's deep-supervised Dice+CE of the student.
* ``unlabeled_loss(unlabeled, labeled)`` — everything else, already multiplied by its (ramped) weight, plus a dict of
  values to log. ``unlabeled["views"]`` is ``[weak, strong_1, ...]`` (same samples, same geometry).

``compute_losses(batch) -> (supervised, unlabeled, logs)`` returns both parts. The update step computes them one
after the other, with a backward pass after each: the labeled graph is freed before the unlabeled forward (lower peak
memory, the same gradient as the backward of the sum, and each forward/backward pair all-reduces cleanly under DDP).
That split is exactly what HCO needs: the labeled gradient is complete before the unlabeled forward starts. A method
whose losses share one graph (e.g. a contrastive loss over labeled and unlabeled anchors) sets ``joint_losses = True``
and overrides ``compute_losses``; the step then backpropagates the sum.

Multi-GPU (DDP, ``-num_gpus N`` as in nnU-Net): nnU-Net wraps the U-Net in ``DistributedDataParallel`` with
``find_unused_parameters=False``, whose reduction assumes one forward and one backward per step that reach every
parameter. Semi-supervised steps break that: two backward passes, unlabeled losses that use only the full-resolution
output (the deep-supervision heads get no gradient from them), a feature stream decoded outside DDP's forward, a
batch whose labeled part is empty on one rank. So the whole step runs in DDP's ``no_sync`` and the base averages the
gradients itself, once per gradient set (:meth:`_average_gradients`: one all-reduce of one flat buffer holding the
U-Net's and the auxiliary modules' gradients; a parameter unused on a rank counts as zero there). Every rank then
takes the same step (same gradients, same clipping, same HCO mask), which the DDP test checks weight for weight. The
price is that the all-reduce no longer overlaps the backward pass. Auxiliary modules start from rank 0's weights and
follow rank 0's buffers after every step (DDP's ``broadcast_buffers`` rule); on CUDA their batch norms become
``SyncBatchNorm``, as nnU-Net does for the U-Net.

Methods with more networks than nnU-Net's U-Net (a classification head, a foundation model) return them from
``build_auxiliary_modules()``; the base moves them to the device, optimizes their trainable parameters with the
U-Net's, switches their train/eval mode, clips them, averages their gradients under DDP and saves them in the
checkpoint under ``auxiliary_weights``. ``network_weights`` stays the U-Net alone, so nnU-Net's predictor loads it.

Hyperparameters are class attributes, so a variant is a two-line subclass and nnU-Net's ``debug.json`` records them;
nnU-Net's five constructor arguments are never extended.
"""
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import join
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from torch import distributed as dist
from torch._dynamo import OptimizedModule

from semi_nnunet.planners.preprocessing import unlabeled_folder_name
from semi_nnunet.trainers.ema import budget_decay, ema_decay, ema_update_, make_teacher
from semi_nnunet.trainers.optimizers import HCOScaler, build_optimizer, is_two_gradient
from semi_nnunet.trainers.progress import append_curves_to_progress_png
from semi_nnunet.trainers.ramps import RAMPS
from semi_nnunet.trainers.schedule import ScheduleMixin
from semi_nnunet.trainers.unlabeled_data import UnlabeledDataset, unlabeled_identifiers
from semi_nnunet.trainers.views import WeakStrongViews, split_views
from semi_nnunet.utilities.checkpoints import load_checkpoint_file
from semi_nnunet.utilities.file_ops import atomic_path

Losses = Tuple[torch.Tensor, torch.Tensor, Dict[str, float]]


class NoUnlabeledDataError(RuntimeError):
    pass


class SemiSupervisedTrainer(ScheduleMixin, nnUNetTrainer):
    """Base of every semi-supervised trainer. Subclasses implement :meth:`unlabeled_loss`."""

    # --- hyperparameters (class attributes) ---
    unlabeled_batch_size: Optional[int] = None  # None: the labeled batch size
    num_strong_views: int = 1
    use_teacher: bool = True
    ema_decay: float = 0.99  # the paper's decay: the cap of the budget rule (ema.budget_decay)
    ema_horizon_fraction: Optional[float] = 0.02  # EMA horizon <= this fraction of the run; None: ema_decay always
    rampup: str = "sigmoid"  # key of semi_nnunet.trainers.ramps.RAMPS
    rampup_fraction: float = 0.4  # ramp length as a fraction of all training iterations
    joint_losses: bool = False
    requires_labels: bool = True  # False for methods that learn without ground truth (USL-Net)
    method_log_keys: Tuple[str, ...] = ()  # per-epoch curves a method adds to the log and progress.png
    # optimizer (semi_nnunet/trainers/optimizers.py): None = nnU-Net's SGD; sgd, adamw, hco_sgd, hco_adamw, ...
    optimizer_name: Optional[str] = None
    adamw_initial_lr: float = 1e-3
    hco_start_epoch: int = 0  # epochs of warm-up with the base optimizer before HCO starts
    hco_lr_scale: float = 1.0
    hco_fused: Optional[bool] = None  # HCO-AdamW's compiled step; None: on CPU for runs of >= 1000 iterations
    lr_scale: float = 1.0  # the other optimizers' rate multiplier (``<Trainer>_lrx<F>``: a step-size control for HCO)
    update_norm_every: int = 10  # log the L2 norm of the weight update every this many steps (a copy of the weights)
    # staged pseudo-labelling (semi_nnunet.stages): stages after this trainer, and the class that trains them
    num_stages: int = 0
    supported_dims: Tuple[int, ...] = (2, 3)  # patch dimensions the method works on (2D-only methods: (2,))
    stage_trainer: Optional[type] = None
    pseudo_label_maps: bool = False  # also save the ensemble's confidence/entropy maps beside each pseudo-label

    base_log_keys = ("sup_loss", "unsup_loss", "unsup_weight", "unsup_sup_ratio", "update_norm")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.teacher: Optional[torch.nn.Module] = None
        self.auxiliary: Optional[torch.nn.ModuleDict] = None
        self._hco_scaler = HCOScaler(self.grad_scaler)
        self.dataloader_unlabeled = None
        self.global_step = 0
        self._epoch_logs: Dict[str, List[float]] = defaultdict(list)
        self.unlabeled_folder = join(self.preprocessed_dataset_folder_base,
                                     unlabeled_folder_name(self.configuration_manager.data_identifier)) \
            if self.preprocessed_dataset_folder_base is not None else None
        for key in self.log_keys:  # nnU-Net's logger accepts only the keys it knows
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])

    @property
    def log_keys(self) -> Tuple[str, ...]:
        hco = ("hco_mask_ratio",) if (self.optimizer_name or "").startswith("hco") else ()
        return tuple(self.base_log_keys) + hco + tuple(self.method_log_keys)

    # ------------------------------------------------------------------ what a method implements
    def unlabeled_loss(self, unlabeled: dict, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The unlabeled part of the loss, already weighted, and values to log. Methods override this."""
        raise NotImplementedError(f"{type(self).__name__} must implement unlabeled_loss")

    def supervised_loss(self, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        """nnU-Net's deep-supervised Dice+CE of the student on ground truth."""
        return self.loss(self.network(labeled["data"]), labeled["target"]), {}

    def compute_losses(self, batch: dict) -> Losses:
        """``(supervised, unlabeled, logs)`` for ``batch = {"labeled": ..., "unlabeled": ...}`` (on the device)."""
        sup, logs = self.supervised_loss(batch["labeled"])
        unsup, logs_u = self.unlabeled_loss(batch["unlabeled"], batch["labeled"])
        return sup, unsup, {**logs, **logs_u}

    # ------------------------------------------------------------------ helpers for methods
    @property
    def total_iterations(self) -> int:
        """Training iterations of the whole run: every schedule (ramps, thresholds, EMA horizon) is a fraction of it."""
        return self.num_epochs * self.num_iterations_per_epoch

    def teacher_decay(self, decay: Optional[float] = None) -> float:
        """This step's EMA decay: the budget rule (:func:`~semi_nnunet.trainers.ema.budget_decay`) on ``decay``
        (default ``ema_decay``), then Mean Teacher's warm-up."""
        target = budget_decay(self.ema_decay if decay is None else decay, self.ema_horizon_fraction,
                              self.total_iterations)
        return ema_decay(self.global_step, target)

    def unlabeled_weight(self, weight: float = 1.0) -> float:
        """``weight`` times the ramp-up (``rampup`` over ``rampup_fraction`` of all iterations)."""
        length = self.rampup_fraction * self.total_iterations
        return weight * RAMPS[self.rampup](self.global_step, length)

    @staticmethod
    def full_resolution(output):
        """The full-resolution output of a (possibly deep-supervised) network."""
        return output[0] if isinstance(output, (list, tuple)) else output

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax, or sigmoid for region-based training (nnU-Net's inference nonlinearity)."""
        return torch.sigmoid(logits) if self.label_manager.has_regions else torch.softmax(logits, 1)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.full_resolution(self.teacher(x))

    def unwrapped_network(self) -> torch.nn.Module:
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    # ------------------------------------------------------------------ set-up
    @classmethod
    def settings_problem(cls) -> Optional[str]:
        """Why this class's attribute settings cannot train, or None. Checked from the class alone, so
        :func:`semi_nnunet.trainers.lookup.check_trainer_settings` refuses a bad combination before any training (a
        staged trainer's later stages included) and ``initialize`` refuses it again. A subclass with a rule extends
        it and returns ``super().settings_problem()`` otherwise."""
        return None

    def initialize(self):
        problem = self.settings_problem()
        if problem:
            raise ValueError(problem)
        super().initialize()
        if self.use_teacher:
            self.teacher = make_teacher(self.unwrapped_network())
            self.teacher.decoder.deep_supervision = False

    def build_auxiliary_modules(self) -> Dict[str, torch.nn.Module]:
        """Networks besides the U-Net that the method trains or keeps (see the module docstring). Default: none."""
        return {}

    def trainable_parameters(self) -> List[torch.nn.Parameter]:
        """What the optimizer updates: the U-Net's parameters, then the auxiliary modules' trainable ones."""
        aux = [p for p in self.auxiliary.parameters() if p.requires_grad] if self.auxiliary is not None else []
        return list(self.network.parameters()) + aux

    def auxiliary_learning_rates(self) -> Dict[str, float]:
        """Auxiliary modules (by name) with their own learning rate; the rest train at the U-Net's. Default: none."""
        return {}

    def parameter_groups(self) -> list:
        """The optimizer's parameter groups: the U-Net and every auxiliary module at the U-Net's rate, then one
        group per module of :meth:`auxiliary_learning_rates` (its poly schedule decays from its own rate)."""
        own = self.auxiliary_learning_rates()
        unknown = set(own) - set(self.auxiliary or {})
        if unknown:
            raise ValueError(f"{type(self).__name__}.auxiliary_learning_rates names {sorted(unknown)}, which "
                             f"build_auxiliary_modules() did not build")
        separate = {id(p) for name in own for p in self.auxiliary[name].parameters()}
        groups = [{"params": [p for p in self.trainable_parameters() if id(p) not in separate]}]
        for name, lr in own.items():
            params = [p for p in self.auxiliary[name].parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": lr})
        return groups

    def build_auxiliary(self) -> None:
        """``self.auxiliary`` from :meth:`build_auxiliary_modules`, once: on the device and, under DDP, starting
        from rank 0's weights (DDP does this for the U-Net when it wraps it), with ``SyncBatchNorm`` on CUDA (as
        nnU-Net does for the U-Net; PyTorch's is CUDA-only). nnU-Net calls ``configure_optimizers`` from
        ``initialize()`` right after building the network; that is where this runs."""
        if self.auxiliary is not None:
            return
        self.auxiliary = torch.nn.ModuleDict(self.build_auxiliary_modules()).to(self.device)
        if self.is_ddp and self.device.type == "cuda":
            self.auxiliary = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.auxiliary)
        self._broadcast_from_rank0(list(self.auxiliary.parameters()) + list(self.auxiliary.buffers()))

    def configure_optimizers(self):
        self.build_auxiliary()
        return build_optimizer(self)

    def check_unlabeled_data(self) -> List[str]:
        ids = unlabeled_identifiers(self.unlabeled_folder)
        if not ids:
            raise NoUnlabeledDataError(
                f"{type(self).__name__} needs unlabeled cases, but {self.unlabeled_folder} holds none. Put unlabeled "
                f"images into imagesUnlabeled/ of the raw dataset (with \"numUnlabeled\" in dataset.json) and run "
                f"semi_nnUNet_plan_and_preprocess -d {self.plans_manager.dataset_name} -c {self.configuration_name}.")
        return ids

    def second_loader_transforms(self, deep_supervision_scales=None):
        """nnU-Net's training transforms for the second loader, and the data-augmentation settings used."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation, deep_supervision_scales, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label)
        return transforms, initial_patch_size, dummy_2d

    def strong_transforms(self):
        """The strong view's transform (intensity only, applied on top of the weak view); None: the default
        ``strong_intensity_transforms``. Methods with their own strong augmentation override this one hook."""
        return None

    def background_loader(self, loader):
        """Half of nnU-Net's augmentation workers for the second loader (none with nnUNet_n_proc_DA=0)."""
        n = get_allowed_n_proc_DA()
        if n == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, num_processes=max(1, n // 2), num_cached=max(3, n // 2),
                                            seeds=None, pin_memory=self.device.type == "cuda", wait_time=0.002)

    def get_unlabeled_dataloader(self):
        ids = self.check_unlabeled_data()
        weak, initial_patch_size, dummy_2d = self.second_loader_transforms()
        views = WeakStrongViews(self.num_strong_views, strong=self.strong_transforms(),
                                ignore_axes=(0,) if dummy_2d else None)
        return self.background_loader(nnUNetDataLoader(
            UnlabeledDataset(self.unlabeled_folder, ids), self.unlabeled_batch_size or self.batch_size,
            initial_patch_size, self.configuration_manager.patch_size, self.label_manager,
            oversample_foreground_percent=0.0, transforms=ComposeTransforms([weak, views])))

    def get_dataloaders(self):
        train, val = super().get_dataloaders()
        self.dataloader_unlabeled = self.get_unlabeled_dataloader()
        return train, val

    def on_train_start(self):
        self.check_unlabeled_data()  # fail before nnU-Net starts its loaders
        super().on_train_start()

    def on_train_end(self):
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()
        self.dataloader_unlabeled = None

    # ------------------------------------------------------------------ the update step
    def _to_device(self, batch: dict) -> dict:
        out = dict(batch)
        for key in ("data", "target"):
            value = batch.get(key)
            if isinstance(value, list):
                out[key] = [v.to(self.device, non_blocking=True) for v in value]
            elif isinstance(value, torch.Tensor):
                out[key] = value.to(self.device, non_blocking=True)
        return out

    def prepare_unlabeled(self, batch: dict) -> dict:
        batch = self._to_device(batch)
        batch["views"] = split_views(batch["data"], self.num_input_channels)
        return batch

    def _autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def _backward(self, loss: torch.Tensor) -> None:
        if not loss.requires_grad:
            return
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def _no_sync(self):
        """The step's context: under DDP, ``no_sync`` (DDP's own reduction stays off; :meth:`_average_gradients`
        reduces instead, see the module docstring), else nothing."""
        return self.network.no_sync() if self.is_ddp else dummy_context()

    def _average_gradients(self, grads: List[Optional[torch.Tensor]]) -> List[Optional[torch.Tensor]]:
        """Under DDP, ``grads`` (one per :meth:`_step_params` entry) averaged over the ranks in one all-reduce of one
        flat buffer. A parameter without a gradient on a rank counts as zero there; one without a gradient on every
        rank stays ``None`` (as without DDP, e.g. the lowest deep-supervision head, which nnU-Net weights 0)."""
        if not self.is_ddp:
            return grads
        params = self._step_params()
        parts = [g.reshape(-1) if g is not None else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                 for p, g in zip(params, grads)]
        present = torch.tensor([g is not None for g in grads], dtype=parts[0].dtype, device=parts[0].device)
        flat = torch.cat(parts + [present])
        dist.all_reduce(flat)
        values = torch.split(flat[:-len(grads)] / dist.get_world_size(), [p.numel() for p in params])
        return [v.view_as(p) if n > 0 else None for p, v, n in zip(params, values, flat[-len(grads):].tolist())]

    def _broadcast_from_rank0(self, tensors: List[torch.Tensor]) -> None:
        """Under DDP, overwrite ``tensors`` with rank 0's values (one broadcast per dtype)."""
        if not self.is_ddp or not tensors:
            return
        by_dtype: Dict[torch.dtype, List[torch.Tensor]] = defaultdict(list)
        for t in tensors:
            by_dtype[t.dtype].append(t)
        with torch.no_grad():
            for group in by_dtype.values():
                flat = torch.cat([t.reshape(-1) for t in group])
                dist.broadcast(flat, 0)
                torch._foreach_copy_(group, [v.view_as(t) for t, v in
                                             zip(group, torch.split(flat, [t.numel() for t in group]))])

    def _average_own_gradients(self) -> None:
        """:meth:`_average_gradients` on the parameters' ``.grad`` (in place of them)."""
        if self.is_ddp:
            params = self._step_params()
            for p, g in zip(params, self._average_gradients([p.grad for p in params])):
                p.grad = g

    def _step_params(self) -> List[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _snapshot(self) -> Optional[List[torch.Tensor]]:
        """The weights before this step when its update norm is logged (every ``update_norm_every`` steps)."""
        if self.update_norm_every <= 0 or self.global_step % self.update_norm_every:
            return None
        return [p.detach().clone() for p in self._step_params()]

    def _update_norm(self, before: Optional[List[torch.Tensor]], logs: dict) -> None:
        """Log the L2 norm over all parameters of what the optimizer step moved them (``before`` is overwritten)."""
        if before:
            torch._foreach_sub_(before, [p.detach() for p in self._step_params()])
            logs["update_norm"] = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(before))))

    def _clip_and_step(self) -> None:
        self._average_own_gradients()
        params = self._step_params()
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            torch.nn.utils.clip_grad_norm_(params, 12)
            self.optimizer.step()

    def update_step(self, labeled: dict, unlabeled: dict) -> Losses:
        """Backward(s) and the optimizer step; returns the detached losses and logs."""
        with self._no_sync():
            if is_two_gradient(self.optimizer) and self.current_epoch >= self.hco_start_epoch:
                return self.hco_update_step(labeled, unlabeled)
            return self.plain_update_step(labeled, unlabeled)

    def plain_update_step(self, labeled: dict, unlabeled: dict) -> Losses:
        """The base optimizer's step: the two backward passes accumulate into one gradient."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.joint_losses:
            with self._autocast():
                sup, unsup, logs = self.compute_losses({"labeled": labeled, "unlabeled": unlabeled})
            self._backward(sup + unsup)
        else:
            with self._autocast():
                sup, logs = self.supervised_loss(labeled)
            self._backward(sup)
            with self._autocast():
                unsup, logs_u = self.unlabeled_loss(unlabeled, labeled)
            self._backward(unsup)
            logs = {**logs, **logs_u}
        before = self._snapshot()
        self._clip_and_step()
        self._update_norm(before, logs)
        return sup.detach(), unsup.detach(), logs

    def hco_update_step(self, labeled: dict, unlabeled: dict) -> Losses:
        """HCO: the labeled and unlabeled gradients kept apart (wiring B: labeled forward and backward, gradients
        set aside by pointer swap, then unlabeled forward and backward; no extra FLOPs). AMP: both sets unscaled by
        hand, their norms taken once for the finiteness check and the clipping (each set to nnU-Net's max norm 12)."""
        params = self._step_params()
        self.optimizer.zero_grad(set_to_none=True)
        if self.joint_losses:  # wiring C: one graph, the labeled gradient by autograd.grad
            with self._autocast():
                sup, unsup, logs = self.compute_losses({"labeled": labeled, "unlabeled": unlabeled})
            scaled = self.grad_scaler.scale(sup) if self.grad_scaler is not None else sup
            grads_l = list(torch.autograd.grad(scaled, params, retain_graph=True, allow_unused=True))
        else:
            with self._autocast():
                sup, logs = self.supervised_loss(labeled)
            self._backward(sup)
            grads_l = [p.grad for p in params]
            for p in params:
                p.grad = None
            with self._autocast():
                unsup, logs_u = self.unlabeled_loss(unlabeled, labeled)
            logs = {**logs, **logs_u}
        self._backward(unsup)
        grads_l = self._average_gradients(grads_l)
        grads_u = self._average_gradients([p.grad for p in params])
        finite = self._hco_scaler.unscale_and_clip_((grads_l, grads_u), 12)
        before = self._snapshot()
        if finite:
            self.optimizer.step_hco(grads_l, grads_u)
        self._hco_scaler.update(finite)
        self.optimizer.zero_grad(set_to_none=True)
        logs["hco_mask_ratio"] = self.optimizer.last_mask_ratio if finite else float("nan")
        self._update_norm(before, logs)
        return sup.detach(), unsup.detach(), logs

    def after_step(self) -> None:
        if self.auxiliary:  # running statistics (batch norm) follow rank 0's, as DDP's broadcast_buffers does
            self._broadcast_from_rank0(list(self.auxiliary.buffers()))
        if self.teacher is not None:
            ema_update_(self.teacher, self.unwrapped_network(), self.teacher_decay())
        self.global_step += 1

    def train_step(self, batch: dict) -> dict:
        labeled = self._to_device(batch)
        unlabeled = self.prepare_unlabeled(next(self.dataloader_unlabeled))
        sup, unsup, logs = self.update_step(labeled, unlabeled)
        self.after_step()
        sup_f, unsup_f = float(sup), float(unsup)  # one device sync each per iteration
        logs = {"sup_loss": sup_f, "unsup_loss": unsup_f, "unsup_weight": self.unlabeled_weight(),
                "unsup_sup_ratio": unsup_f / sup_f if sup_f != 0 else float("nan"), **logs}
        for key, value in logs.items():
            self._epoch_logs[key].append(float(value))
        return {"loss": np.asarray(sup_f + unsup_f)}

    # ------------------------------------------------------------------ logging
    def on_train_epoch_start(self):
        self._epoch_logs = defaultdict(list)
        super().on_train_epoch_start()
        if self.auxiliary is not None:
            self.auxiliary.train()

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        if self.auxiliary is not None:
            self.auxiliary.eval()

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        for key in self.log_keys:
            values = self._epoch_logs.get(key, [])
            value = float(np.mean(values)) if values else float("nan")
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, value)
                value = float(np.nanmean(gathered))
            self.logger.log(key, value, self.current_epoch)
        self.print_to_log_file(", ".join(f"{k} {self.logger.get_value(k, step=-1):.4g}" for k in self.log_keys))

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            append_curves_to_progress_png(self.output_folder, self.logger.local_logger.my_fantastic_logging,
                                          self.log_keys)

    # ------------------------------------------------------------------ checkpoints
    def extra_checkpoint_state(self) -> dict:
        """State beyond nnU-Net's keys (teacher, step counter); methods with more state extend this."""
        return {"teacher_weights": self.teacher.state_dict() if self.teacher is not None else None,
                "auxiliary_weights": self.auxiliary.state_dict() if self.auxiliary else None,
                "semi_global_step": self.global_step, "hco_clean_steps": self._hco_scaler.clean_steps}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        if self.teacher is not None:
            if checkpoint.get("teacher_weights") is not None:
                self.teacher.load_state_dict(checkpoint["teacher_weights"])
            else:  # e.g. -pretrained_weights or a stock nnU-Net checkpoint: start the teacher at the student
                self.teacher.load_state_dict(self.unwrapped_network().state_dict())
        if self.auxiliary and checkpoint.get("auxiliary_weights") is not None:
            self.auxiliary.load_state_dict(checkpoint["auxiliary_weights"])
        self.global_step = checkpoint.get("semi_global_step", self.current_epoch * self.num_iterations_per_epoch)
        self._hco_scaler.clean_steps = checkpoint.get("hco_clean_steps", 0)

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint (``network_weights`` = the student, the inference model) plus our state, written
        atomically so an interruption never leaves a truncated checkpoint."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": self.unwrapped_network().state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            **self.extra_checkpoint_state(),
        }
        with atomic_path(filename) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        # PyTorch's restricted unpickler first (tensors and plain values only; a truncated or unsafe file is an error
        # naming it): nnU-Net's own full unpickle below then only ever sees a file that passed it
        checkpoint = load_checkpoint_file(filename_or_checkpoint, map_location=self.device) \
            if isinstance(filename_or_checkpoint, str) else filename_or_checkpoint
        super().load_checkpoint(filename_or_checkpoint)  # nnU-Net restores student, optimizer, logger, epoch
        for key in self.log_keys:  # checkpoints from before a curve existed
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [float("nan")] * self.current_epoch)
        self.load_extra_checkpoint_state(checkpoint)


def unlabeled_preprocessed(trainer_class: type, preprocessed_dataset_folder_base: str, data_identifier: str) -> bool:
    """True when ``trainer_class`` needs no unlabeled data or finds some (used before any training starts)."""
    if not issubclass(trainer_class, SemiSupervisedTrainer):
        return True
    folder = join(preprocessed_dataset_folder_base, unlabeled_folder_name(data_identifier))
    return bool(unlabeled_identifiers(folder))

