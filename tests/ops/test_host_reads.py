"""Inner loops read nothing back from the device (on a GPU every read is a host sync): counted through a
TorchDispatchMode (item, bool, is_nonzero, equal) and a TorchFunctionMode (tolist, numpy), the reads of
mf.sample and mf.sample_diffusion do not grow with the steps, an Algorithm 1 loss reads nothing, and neither
does a training step outside the logging interval."""
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import mcm_fast as mf
from mcm_fast.models import MLPNet, uvit
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import Trainer

READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default, torch.ops.aten.is_nonzero.default,
         torch.ops.aten.equal.default}
CONVERSIONS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__array__}
SCHED = mf.CosineSchedule()


class HostReads(TorchDispatchMode):
    """Counts the reads of tensor values by the host, except of the tensors in `ignore` (by storage)."""

    def __init__(self, ignore=()):
        super().__init__()
        self.count, self.ignore = 0, {t.untyped_storage().data_ptr() for t in ignore}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS and args[0].untyped_storage().data_ptr() not in self.ignore:
            self.count += 1
        return func(*args, **(kwargs or {}))


class Conversions(TorchFunctionMode):
    def __init__(self, reads: HostReads):
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in CONVERSIONS:
            self.reads.count += 1
        return func(*args, **(kwargs or {}))


def host_reads(fn, ignore=()) -> int:
    reads = HostReads(ignore)
    with reads, Conversions(reads):
        fn()
    return reads.count


def image_model():
    torch.manual_seed(0)
    return mf.Denoiser(uvit("tiny", in_channels=1, num_classes=10), SCHED).eval()


@pytest.mark.parametrize("boundaries", ["t", "logsnr"])
def test_sampling_reads_nothing_per_step(boundaries):
    model, label = image_model(), torch.arange(2) % 10
    z = torch.randn(2, 1, 8, 8)
    reads = [host_reads(lambda n=n: mf.sample(model, n, noise=z, boundaries=boundaries, label=label))
             for n in (2, 4)]
    assert reads[1] - reads[0] == 0, reads


@pytest.mark.parametrize("solver", ["ddim", "addim", "euler", "heun", "ancestral"])
def test_diffusion_sampling_reads_nothing_per_step(solver):
    model, z = mf.Denoiser(MLPNet(dim=3), SCHED), torch.randn(4, 3)
    reads = [host_reads(lambda n=n: mf.sample_diffusion(model, n, solver, noise=z)) for n in (2, 4)]
    assert reads[1] - reads[0] == 0, reads


@pytest.mark.parametrize("options, distill", [
    ({}, True), ({}, False), ({"teacher_solver": "heun"}, True),
    ({"teacher_solver": "euler", "xvar_frac": "analytic"}, True),
    ({"target": "direct"}, True), ({"boundaries": "logsnr", "weighting": "snr+1"}, False),
    ({"multiscale": 1, "label_dropout": 0.5, "null_label": 10}, True)])
def test_an_algorithm_1_loss_reads_nothing(options, distill):
    model = image_model().train()
    teacher = image_model() if distill else None
    objective = mf.MCMObjective(SCHED, student_steps=2, teacher_steps=8, **options)
    x, label = torch.randn(3, 1, 8, 8), torch.arange(3)
    assert host_reads(lambda: objective.loss_at(model, x, 4, teacher=teacher, label=label).backward()) == 0


@pytest.mark.parametrize("changes", [{}, {"kind": "ct", "init": "random"},
                                     {"kind": "cm", "init": "random", "song": {"mode": "ct"}}],
                         ids=["teacher", "ct", "cm"])
def test_a_training_step_reads_nothing_outside_the_logging_interval(tmp_path, changes):
    config = load_config({"preset": "tiny-teacher", "data": {"resolution": 8}, "optim": {"batch_size": 4},
                          "log_every": 100, "steps": 10, **changes})
    trainer = Trainer(config, tmp_path, progress=False)
    trainer._train_step(0)
    # foreach AdamW keeps its step counters on the host by design (the trainer's fused AdamW on a GPU reads none)
    counters = [state["step"] for state in trainer.optimizer.state.values()]
    assert host_reads(lambda: trainer._train_step(1), ignore=counters) == 0
