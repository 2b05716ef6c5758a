"""Short-schedule variants for smoke runs, the demo and benchmarks: subclasses that set attributes only."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from semi_nnunet.trainers.mean_teacher import MeanTeacherTrainer
from semi_nnunet.trainers.schedule import ScheduleMixin
from semi_nnunet.trainers.semi_cervixseg import SemiCervixTrainer


class nnUNetTrainer_demo(ScheduleMixin, nnUNetTrainer):
    """The supervised nnU-Net baseline on the demo's CPU budget: 20 epochs of 50 iterations, the schedule of the
    benchmark's ``nnUNetTrainer_20epochs_50it`` (documentation/benchmarks/hc18_demo_budget, three training seeds on the
    demo's own images), so the demo's numbers are one more sample of that measured grid."""
    schedule = dict(num_epochs=20, num_iterations_per_epoch=50, num_val_iterations_per_epoch=10, save_every=5)


class nnUNetTrainer_2epochs_2it(ScheduleMixin, nnUNetTrainer):
    """Two epochs of two iterations: integration tests."""
    schedule = dict(num_epochs=2, num_iterations_per_epoch=2, num_val_iterations_per_epoch=1)


class MeanTeacherTrainer_demo(MeanTeacherTrainer):
    """Mean Teacher on the demo's CPU budget (same schedule as nnUNetTrainer_demo)."""
    schedule = nnUNetTrainer_demo.schedule


class MeanTeacherTrainer_2epochs_2it(MeanTeacherTrainer):
    """Integration tests. Four iterations are shorter than any EMA horizon, so the budget rule would make the teacher
    the student; the paper's decay is kept so the tests see a teacher that lags."""
    schedule = nnUNetTrainer_2epochs_2it.schedule
    ema_horizon_fraction = None


class MeanTeacherTrainer_5epochs(MeanTeacherTrainer):
    schedule = dict(num_epochs=5)


class SemiCervixTrainer_2epochs_2it(SemiCervixTrainer):
    schedule = nnUNetTrainer_2epochs_2it.schedule


class SemiCervixTrainer_softmax(SemiCervixTrainer):
    """Consistency on probabilities instead of logits (bounded; where the paper is ambiguous)."""
    cons_space = "softmax"


class SemiCervixTrainer_uniform(SemiCervixTrainer):
    """Stages sample each batch uniformly from labeled + pseudo-labeled cases, as the paper does (instead of 1:1)."""
    pseudo_sampling = "uniform"


class SemiCervixTrainer_demo(SemiCervixTrainer):
    """Semi-CervixSeg on the demo's CPU budget (same schedule as nnUNetTrainer_demo; its stages inherit it)."""
    schedule = nnUNetTrainer_demo.schedule


class SemiCervixTrainer_uniform_demo(SemiCervixTrainer_uniform):
    """Semi-CervixSeg with the paper's uniform stage sampling on the demo's CPU budget: stage 0 and one pseudo-label
    stage (the 8000-iteration benchmark's setting), each on nnUNetTrainer_demo's schedule."""
    schedule = nnUNetTrainer_demo.schedule
    num_stages = 1


class SemiCervixTrainer_softmax_demo(SemiCervixTrainer_softmax):
    """The softmax-space consistency on the demo's CPU budget (benchmark comparison with SemiCervixTrainer_demo)."""
    schedule = nnUNetTrainer_demo.schedule


class MeanTeacherTrainer_ema90(MeanTeacherTrainer):
    """A teacher with a ~10-step horizon (EMA decay 0.9 instead of 0.99) for very short budgets: at 0.99 the teacher of
    a 120-iteration run averages most of the run, i.e. an early, worse student (label-efficiency benchmark)."""
    ema_decay = 0.9
