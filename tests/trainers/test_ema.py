"""EMA teacher: warm-up decay, the update rule on parameters and buffers, and the frozen copy."""
import pytest
import torch
from torch import nn

from semi_nnunet.trainers.ema import budget_decay, ema_decay, ema_update_, make_teacher


@pytest.mark.parametrize("step, decay, expected", [
    (0, 0.99, 0.0),          # 1 - 1/1: the first update copies the student
    (1, 0.99, 0.5),          # 1 - 1/2
    (3, 0.99, 0.75),         # 1 - 1/4
    (9, 0.99, 0.9),          # 1 - 1/10
    (99, 0.99, 0.99),        # 1 - 1/100 == decay
    (10_000, 0.99, 0.99),    # capped at decay
    (10_000, 0.999, 0.999),
    (1, 0.3, 0.3),           # decay below the warm-up value wins
])
def test_ema_decay(step, decay, expected):
    assert ema_decay(step, decay) == pytest.approx(expected, rel=1e-15, abs=0)


@pytest.mark.parametrize("decay, fraction, total, expected", [
    (0.99, 0.02, 250_000, 0.99),       # nnU-Net's 1000 x 250: the paper's decay
    (0.99, 0.02, 5_000, 0.99),         # the shortest run that still gets it: horizon 100 steps
    (0.99, 0.02, 4_000, 1 - 1 / 80),   # 0.9875: the benchmark's budget
    (0.99, 0.02, 160, 1 - 1 / 3.2),    # 0.6875: 8 epochs x 20 iterations (the first demo)
    (0.99, 0.02, 50, 0.0),             # a horizon of one step: the teacher is the student
    (0.99, None, 160, 0.99),           # the rule switched off
    (0.9, 0.02, 4_000, 0.9),           # a decay below the budget's stays
])
def test_budget_decay_ties_the_ema_horizon_to_the_run(decay, fraction, total, expected):
    assert budget_decay(decay, fraction, total) == pytest.approx(expected, rel=1e-15, abs=0)


class Tiny(nn.Module):
    """Conv + InstanceNorm (affine, running stats) + BatchNorm + Linear: float params, float and int buffers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.inorm = nn.InstanceNorm2d(2, affine=True, track_running_stats=True)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 2 * 2, 3)

    def forward(self, x):
        return self.fc(self.bn(self.inorm(self.conv(x))).flatten(1))


def _fill(module: nn.Module, offset: float) -> None:
    """Integer-valued float params/buffers (exact arithmetic), distinct per tensor; counters set to ``offset``."""
    with torch.no_grad():
        for i, t in enumerate(list(module.parameters()) + list(module.buffers())):
            if t.dtype.is_floating_point:
                t.copy_(torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) * (i + 1) + offset)
            else:
                t.fill_(int(offset))


def _floats(module):
    return [t.detach().clone() for t in list(module.parameters()) + list(module.buffers())
            if t.dtype.is_floating_point]


def _pair(teacher_offset=1.0, student_offset=4.0):
    torch.manual_seed(0)
    teacher, student = Tiny(), Tiny()
    _fill(teacher, teacher_offset)
    _fill(student, student_offset)
    return teacher, student


def test_tiny_network_has_float_and_integer_buffers():
    names = dict(Tiny().named_buffers())
    assert {"inorm.running_mean", "inorm.running_var", "bn.running_mean", "bn.running_var"} <= set(names)
    assert names["bn.num_batches_tracked"].dtype == torch.int64
    assert names["inorm.num_batches_tracked"].dtype == torch.int64


def test_alpha_0_copies_the_student_exactly():
    teacher, student = _pair()
    ema_update_(teacher, student, 0.0)
    for (name, t), s in zip(teacher.state_dict().items(), student.state_dict().values()):
        assert torch.equal(t, s), name


def test_alpha_1_leaves_the_teacher_unchanged():
    teacher, student = _pair()
    before = _floats(teacher)
    ema_update_(teacher, student, 1.0)
    for b, t in zip(before, _floats(teacher)):
        assert torch.equal(b, t)


def test_alpha_half_gives_the_midpoint():
    teacher, student = _pair(teacher_offset=1.0, student_offset=4.0)
    # hand-computed: tensor i (params then buffers) holds arange * (i + 1) + offset in both networks, so the
    # midpoint is arange * (i + 1) + (1 + 4) / 2 = arange * (i + 1) + 2.5
    ema_update_(teacher, student, 0.5)
    tensors = list(teacher.parameters()) + list(teacher.buffers())
    for i, t in enumerate(tensors):
        if t.dtype.is_floating_point:
            expected = torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) * (i + 1) + 2.5
            assert torch.equal(t, expected), i
    # counters are copied, not averaged
    assert int(teacher.bn.num_batches_tracked) == 4
    assert int(teacher.inorm.num_batches_tracked) == 4


def test_alpha_quarter_weights_teacher_three_to_one():
    teacher, student = _pair(teacher_offset=0.0, student_offset=8.0)
    ema_update_(teacher, student, 0.75)  # 0.75 * t + 0.25 * s = t + 2 (t and s differ by 8 everywhere)
    tensors = list(teacher.parameters()) + list(teacher.buffers())
    for i, t in enumerate(tensors):
        if t.dtype.is_floating_point:
            expected = torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) * (i + 1) + 2.0
            assert torch.equal(t, expected), i


def test_integer_buffers_are_copied():
    teacher, student = _pair()
    with torch.no_grad():
        student.bn.num_batches_tracked.fill_(17)
        student.inorm.num_batches_tracked.fill_(5)
    ema_update_(teacher, student, 0.9)
    assert teacher.bn.num_batches_tracked.dtype == torch.int64
    assert int(teacher.bn.num_batches_tracked) == 17
    assert int(teacher.inorm.num_batches_tracked) == 5


def test_student_is_not_modified_and_needs_no_grad_mode():
    teacher, student = _pair()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    ema_update_(teacher, student, 0.5)  # student params require grad; the update must still work in place
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in student.parameters())


def test_update_after_a_real_student_step():
    torch.manual_seed(1)
    student = Tiny()
    teacher = make_teacher(student)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    student(torch.randn(4, 1, 4, 4)).pow(2).mean().backward()
    opt.step()
    t_before = [p.clone() for p in teacher.parameters()]
    ema_update_(teacher, student, 0.5)
    for tb, t, s in zip(t_before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, (tb + s.detach()) / 2, rtol=0, atol=1e-6)
    assert int(teacher.bn.num_batches_tracked) == 1  # the student's forward counted one batch


def test_different_parameter_lists_raise():
    with pytest.raises(ValueError):
        ema_update_(nn.Linear(2, 2), nn.Linear(2, 2, bias=False), 0.5)


def test_make_teacher_is_frozen_eval_and_independent():
    torch.manual_seed(2)
    student = Tiny().train()
    teacher = make_teacher(student)
    assert teacher is not student
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())  # the student is untouched
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert student.training
    # same values, separate storage
    for (name, t), s in zip(teacher.state_dict().items(), student.state_dict().values()):
        assert torch.equal(t, s), name
        assert t.data_ptr() != s.data_ptr(), name
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student.bn.running_mean.add_(3.0)
        student.bn.num_batches_tracked.add_(7)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_make_teacher_forward_gives_no_graph():
    student = Tiny()
    teacher = make_teacher(student)
    out = teacher(torch.randn(2, 1, 4, 4))
    assert not out.requires_grad
