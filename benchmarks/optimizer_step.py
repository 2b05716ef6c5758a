"""The optimizer step alone: HCO-AdamW (``_foreach`` and compiled) vs torch AdamW (default and fused) and HCO-SGD
vs torch SGD on 23.6 M parameters (a 2D nnU-Net's size), median of steps 2-6 (the first one, which compiles a fused
step, not counted). This isolates the element-wise work HCO adds (spec: about 2.5x AdamW's).

    python benchmarks/optimizer_step.py
"""

import time
import torch
from semi_nnunet.optim import HierarchicalCautiousAdamW, HierarchicalCautiousSGD

torch.manual_seed(0)
shapes = [(512, 512, 3, 3)] * 8 + [(256, 256, 3, 3)] * 8 + [(64,)] * 40


def make():
    return [torch.nn.Parameter(torch.randn(s)) for s in shapes]


n = sum(torch.Size(s).numel() for s in shapes)
print("params", n / 1e6, "M")


def bench(opt_fn, hco):
    ps = make()
    opt = opt_fn(ps)
    gl = [torch.randn_like(p) for p in ps]
    gu = [torch.randn_like(p) for p in ps]
    for p, g in zip(ps, gl):
        p.grad = g
    ts = []
    for i in range(6):
        t = time.perf_counter()
        if hco:
            opt.step_hco(gl, gu)
        else:
            opt.step()
        ts.append(time.perf_counter() - t)
    return sorted(ts[1:])[2]  # median of steps 2-6


for name, fn, hco in [
    ("AdamW torch", lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=3e-5), False),
    ("AdamW torch fused", lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=3e-5, fused=True), False),
    ("HCO-AdamW", lambda ps: HierarchicalCautiousAdamW(ps, lr=1e-3, weight_decay=3e-5), True),
    ("HCO-AdamW fused", lambda ps: HierarchicalCautiousAdamW(ps, lr=1e-3, weight_decay=3e-5, fused=True), True),
    ("SGD torch", lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5), False),
    ("HCO-SGD", lambda ps: HierarchicalCautiousSGD(ps, lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5), True),
]:
    print(name, round(bench(fn, hco), 4))
