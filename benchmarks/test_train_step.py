"""One training step of multistep consistency distillation (S = 4, an aDDIM teacher): the teacher's and the
reference's forwards without gradients, the student's forward and backward, the fused target and loss and AdamW.
"eager" is the straightforward step (eager loss, AdamW's default implementation); "compiled" runs the loss as
one compiled graph (its backward compiled with it) and fused AdamW. Images/s and the fraction of the matmul rate
measured in the same run, counting 5 forward passes of FLOPs per step (3 forwards, a backward of 2).
bf16 autocast on GPU, float32 on CPU. Sizes from MCM_FAST_BENCH_TRAIN (resolution x batch).
Run: pytest benchmarks/test_train_step.py
"""
import copy
import os

import pytest
import torch

import mcm_fast as mf
from benchmarks.conftest import DEVICE, forward_flops
from benchmarks.test_sampling import autocast, bench_network

DEFAULT = "64x64" if DEVICE.type == "cuda" else "16x32"
SIZES = [tuple(int(v) for v in size.split("x")) for size in os.environ.get("MCM_FAST_BENCH_TRAIN", DEFAULT).split(",")]


@pytest.mark.parametrize("impl", ["eager", "compiled"])
@pytest.mark.parametrize("resolution,batch", SIZES, ids=[f"{r}px-B{b}" for r, b in SIZES])
def test_train_step(measure, resolution, batch, impl):
    net = bench_network().to(DEVICE)
    schedule = mf.CosineSchedule()
    student = mf.Denoiser(net, schedule)
    teacher = mf.Denoiser(copy.deepcopy(net).eval().requires_grad_(False), schedule)
    objective = mf.MCMObjective(schedule, student_steps=4, teacher_steps=(64, 1280, 100_000))
    compiled = impl == "compiled"
    loss_at = torch.compile(objective.loss_at) if compiled else objective.loss_at
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, fused=compiled)
    shape = (batch, net.config.in_channels, resolution, resolution)
    x = torch.randn(shape, device=DEVICE)
    label = torch.arange(batch, device=DEVICE) % 10
    step = [0]

    def run():
        with autocast():
            loss = loss_at(student, x, objective.segment_steps(step[0]), teacher=teacher, label=label)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step[0] += 1000  # the annealed teacher steps change n_seg as training goes

    flops = 5 * forward_flops(net, shape, 10)
    measure(run, group=f"train-step-{resolution}px-B{batch}", impl=impl, flops=flops, items=batch)
