"""Issue 9's fast paths: the training loss as one compiled graph (no graph breaks, the same loss and gradients
as eager), dropout masks shared through a MaskTape, and the sampler captured in a CUDA graph (CUDA only)."""
import pytest
import torch

import mcm_fast as mf
from mcm_fast.cuda_graphs import graph_count
from mcm_fast.models import Dropout, MaskTape, uvit
from mcm_fast.models.dropout import foreign_dropout

SCHED = mf.CosineSchedule()


def tiny_student_and_teacher(seed=0, dropout=0.1):
    """Two tiny UViTs as Denoisers, perturbed so that neither outputs zero (the last conv starts at zero)."""
    torch.manual_seed(seed)
    student = mf.Denoiser(uvit("tiny", in_channels=1, num_classes=10, dropout=dropout), SCHED)
    teacher = mf.Denoiser(uvit("tiny", in_channels=1, num_classes=10).eval().requires_grad_(False), SCHED)
    with torch.no_grad():
        for p in [*student.parameters(), *teacher.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    return student, teacher


def batch(seed=1, n=6):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("kind", ["cd", "ct", "direct"])
def test_the_training_loss_is_one_graph(kind):
    """Teacher and reference forwards, the student's forward, the target and the loss: one graph, no breaks,
    with dropout in the student (the masks go through the tape, not through a forked RNG state)."""
    student, teacher = tiny_student_and_teacher()
    objective = mf.MCMObjective(SCHED, student_steps=4, teacher_steps=16,
                                target="direct" if kind == "direct" else "mcm")
    x, label = batch()
    explained = torch._dynamo.explain(objective.loss_at)(student, x, 4, teacher=None if kind == "ct" else teacher,
                                                          label=label)
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1


def test_compiled_loss_and_gradients_match_eager():
    """With eager random numbers (fallback_random), the compiled loss and its gradients equal the eager ones
    (without dropout, whose masks the compiled graph draws in its own order)."""
    student, teacher = tiny_student_and_teacher(dropout=0.0)
    objective = mf.MCMObjective(SCHED, student_steps=4, teacher_steps=16)
    compiled = torch.compile(objective.loss_at, fullgraph=True)
    x, label = batch()
    results = []
    with torch._inductor.config.patch(fallback_random=True):
        for loss_at in (objective.loss_at, compiled):
            torch.manual_seed(3)
            loss = loss_at(student, x, 4, teacher=teacher, label=label)
            grads = torch.autograd.grad(loss, list(student.parameters()))
            results.append((loss.detach(), grads))
    (loss_e, grads_e), (loss_c, grads_c) = results
    assert loss_e.item() > 0
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-6)
    for g_c, g_e in zip(grads_c, grads_e):
        torch.testing.assert_close(g_c, g_e, rtol=1e-3, atol=1e-5)


def test_compiled_loss_refuses_torch_dropout_it_cannot_share():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Dropout(0.2))

        def forward(self, z, t):
            return self.net(z)

    model = Model()
    assert foreign_dropout(model) == ["net.1"] and foreign_dropout(model.eval()) == []
    objective = mf.MCMObjective(SCHED, student_steps=2, teacher_steps=4)
    with pytest.raises(Exception, match="reference: compiled"):
        torch.compile(objective.loss_at, fullgraph=True)(model.train(), torch.randn(4, 16), 2)


def test_mask_tape_replays_the_recorded_masks():
    drop = Dropout(0.5).train()
    x = torch.randn(4, 1000) + 3
    with MaskTape() as tape:
        first = drop(x)
        tape.replay()
        second = drop(2 * x)
        with pytest.raises(RuntimeError, match="dropout: the replayed pass differs"):
            drop(x)  # one more layer than recorded
    torch.testing.assert_close(second, 2 * first)
    kept = first != 0
    assert 0.45 < kept.float().mean().item() < 0.55  # p = 0.5
    torch.testing.assert_close(first[kept], 2 * x[kept])  # scaled by 1 / (1 - p)
    assert not torch.equal(drop(x) != 0, kept)  # outside a tape: fresh masks, as torch.nn.Dropout
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("compiled", [False, True])
def test_uvit_dropout_masks_replay_from_the_tape(compiled):
    """The reference pass (no gradients) records the UViT's dropout masks and the student pass replays them,
    eagerly and inside one compiled graph: the same input gives the same output; a fresh draw differs."""
    student, _ = tiny_student_and_teacher(dropout=0.3)
    x, label = batch()
    t = torch.full((x.shape[0],), 0.5, dtype=torch.float64)

    def twice(z):
        with MaskTape() as tape:
            with torch.no_grad():
                reference = student(z, t, label=label)
            tape.replay()
            return reference, student(z, t, label=label)

    reference, again = (torch.compile(twice, fullgraph=True) if compiled else twice)(x)
    torch.testing.assert_close(again, reference)
    assert not torch.allclose(student(x, t, label=label), reference)


# ---- the sampler in a CUDA graph ----

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def cuda_model(seed=0):
    student, _ = tiny_student_and_teacher(seed, dropout=0.0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student.cuda().eval()


@cuda
@pytest.mark.parametrize("guidance,compile", [(0.0, False), (1.5, False), (0.0, True)])
def test_captured_sampling_matches_eager(guidance, compile):
    model = cuda_model()
    label = torch.arange(8, device="cuda") % 10
    extra = {"null_cond": {"label": 10}} if guidance else {}
    outs = []
    for cuda_graph in (False, True, True):  # the second graph call replays the cached graph
        gen = torch.Generator("cuda").manual_seed(5)
        outs.append(mf.sample(model, 4, shape=(8, 1, 16, 16), generator=gen, guidance=guidance,
                              compile=compile, cuda_graph=cuda_graph, label=label, **extra))
    assert graph_count(model) == 1
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-4, atol=1e-4)
    new_noise = mf.sample(model, 4, noise=torch.randn(8, 1, 16, 16, device="cuda"), guidance=guidance,
                          compile=compile, cuda_graph=True, label=label, generator=torch.Generator("cuda"), **extra)
    assert not torch.allclose(new_noise, outs[0])  # the replay reads the new inputs


@cuda
def test_captured_sampling_sees_weights_updated_in_place():
    model = cuda_model()
    z = torch.randn(4, 1, 16, 16, device="cuda")
    label = torch.zeros(4, dtype=torch.long, device="cuda")
    before = mf.sample(model, 2, noise=z, cuda_graph=True, label=label)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    after = mf.sample(model, 2, noise=z, cuda_graph=True, label=label)
    torch.testing.assert_close(after, mf.sample(model, 2, noise=z, label=label), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(after, before)
