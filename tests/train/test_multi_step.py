"""One student for every step count (student_steps a tuple) and guidance distilled into the student (issue 22):
what reaches the networks, Algorithm 1 with the exact consistency function of each S, the samplers' calls, the
configs and the CLI, and a 2-D student serving S = 1, 2, 4 against its teacher."""
import json

import pytest
import torch

import mcm_fast as mf
from closed_form import consistency_function, exact_denoiser
from mcm_fast.cli import main
from mcm_fast.models import MLPNet, uvit
from mcm_fast.ops.steps import ddim_unchecked
from mcm_fast.train.build import load_model, load_teacher_weights
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import train

SCHED = mf.CosineSchedule()


class Recorder(torch.nn.Module):
    """A model (z, t, **cond) -> x_hat that keeps every call's t and inputs; x_hat = 0.5 z (+ label / 10)."""

    schedule = SCHED

    def __init__(self, student_steps=None, guidance_distilled=False):
        super().__init__()
        self.student_steps, self.guidance_distilled, self.calls = student_steps, guidance_distilled, []

    def forward(self, z, t, **cond):
        self.calls.append({"batch": z.shape[0], "t": torch.as_tensor(t), **cond})
        out = 0.5 * z
        if "label" in cond:
            out = out + cond["label"].to(z.dtype)[:, None] / 10
        return out


def test_each_example_draws_its_s_and_w_and_the_networks_see_them():
    steps, n_total = (1, 2, 4, 8), 32
    obj = mf.MCMObjective(SCHED, student_steps=steps, teacher_steps=n_total, guidance=(0.5, 3.0), null_label=9)
    student, teacher = Recorder(steps, True), Recorder()
    label = torch.randint(0, 9, (4096,), generator=torch.Generator().manual_seed(0))
    obj(student, torch.randn(4096, 3), teacher=teacher, label=label, generator=torch.Generator().manual_seed(1))
    reference, online = student.calls
    s_b, w = online["student_steps"], online["guidance"]
    assert torch.equal(reference["student_steps"], s_b) and torch.equal(reference["guidance"], w)
    assert set(s_b.tolist()) == set(steps) and s_b.dtype == torch.long
    counts = torch.stack([(s_b == s).sum() for s in steps]).double()
    assert (counts / 4096 - 0.25).abs().max() < 0.03, counts  # uniform over the tuple
    assert 0.5 <= w.min() and w.max() <= 3.0 and abs(w.mean().item() - 1.75) < 0.05
    # t lies on example b's own grid: n_seg = N / S teacher steps per segment, N = 32 for every S
    t = online["t"]
    assert torch.equal(t * n_total, (t * n_total).round()) and bool((t > 0).all())
    # the teacher is called once on [z, z] with the null label in the second half and gets no student inputs
    (call,) = teacher.calls
    assert call["batch"] == 8192 and set(call) == {"batch", "t", "label"}
    assert torch.equal(call["label"][:4096], label) and bool((call["label"][4096:] == 9).all())


def test_probabilities_of_the_step_counts():
    obj = mf.MCMObjective(SCHED, student_steps=(2, 4), teacher_steps=16, steps_probs=(3, 1))
    student = Recorder((2, 4))
    obj(student, torch.randn(4000, 2), teacher=Recorder(), generator=torch.Generator().manual_seed(0))
    share = (student.calls[-1]["student_steps"] == 2).double().mean().item()
    assert abs(share - 0.75) < 0.03
    assert obj.segment_steps(0) == (8, 4)


def test_addim_x_var_comes_from_the_conditional_output(monkeypatch):
    """Guided teacher: (1 + w) x_cond - w x_null is the step's x_hat, but x_var reads x_cond (the paper's rule)."""
    seen = {}

    def spy(x_hat, z_t, logsnr_t, logsnr_s, x_var, backend=None):
        seen.update(x_hat=x_hat, x_var=x_var, logsnr_s=logsnr_s)
        return ddim_unchecked(x_hat, z_t, logsnr_t, logsnr_s, backend)

    monkeypatch.setattr("mcm_fast.integrators.addim_unchecked", spy)
    obj = mf.MCMObjective(SCHED, student_steps=1, teacher_steps=4, guidance=(2.0, 2.0), null_label=0, xvar_frac=1.0)
    x, label = torch.randn(256, 8, dtype=torch.float64), torch.full((256,), 5)
    obj(Recorder(guidance_distilled=True), x, teacher=Recorder(), label=label,
        generator=torch.Generator().manual_seed(3))
    x_cond = seen["x_hat"] - 1.0  # x_cond = 0.5 z + 0.5 and x_null = 0.5 z, so the guided x_hat is 0.5 z + 1.5
    at_zero = seen["logsnr_s"] == SCHED.logsnr(torch.zeros(1, dtype=torch.float64))  # a step into s = 0: DDIM
    assert 0 < int(at_zero.sum()) < 256
    expected = torch.where(at_zero, 0.0, (x_cond - x).square().mean(1))
    torch.testing.assert_close(seen["x_var"], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("target, teacher", [("mcm", None), ("direct", Recorder())])
def test_from_data_and_direct_cm_serve_several_s(target, teacher):
    steps = (2, 4)
    obj = mf.MCMObjective(SCHED, student_steps=steps, teacher_steps=8, target=target, teacher_solver="ddim")
    student = Recorder(steps)
    loss = obj(student, torch.randn(512, 3), teacher=teacher, generator=torch.Generator().manual_seed(0))
    s_b, t = student.calls[-1]["student_steps"], student.calls[-1]["t"]
    assert set(s_b.tolist()) == set(steps) and bool(torch.isfinite(loss))
    assert torch.equal(t * 8, (t * 8).round())  # n_seg = 8 / S steps per segment of 1 / S: the grid k / 8
    if teacher is not None:  # Direct CM solves up to the largest n_seg rounds, each on the whole batch
        assert len(teacher.calls) == 4


@pytest.mark.parametrize("target, grids", [("mcm", (16, 64, 256, 1024)), ("direct", (4, 16, 64, 256))])
def test_the_exact_consistency_function_of_each_s_has_a_vanishing_loss(target, grids):
    steps = (1, 2, 4)
    exact = {s: consistency_function(s) for s in steps}

    def student(z, t, student_steps, scale=1.0):
        out = torch.stack([exact[s](z, t) for s in steps])  # [len(steps), B, d]
        pick = torch.stack([student_steps == s for s in steps])[..., None]
        return scale * (out * pick).sum(0)

    x = 0.5 * torch.randn(512, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    losses = {}
    for n in grids:
        obj = mf.MCMObjective(SCHED, student_steps=steps, teacher_steps=n * 4, teacher_solver="ddim", target=target)
        for name, model in (("exact", student),
                            ("scaled", lambda z, t, student_steps: student(z, t, student_steps, 1.05)),
                            ("one S", lambda z, t, student_steps: exact[4](z, t))):
            losses[n, name] = obj(model, x, teacher=exact_denoiser, generator=torch.Generator().manual_seed(2)).item()
    curve = [losses[n, "exact"] for n in grids]
    assert all(a > b for a, b in zip(curve, curve[1:])), curve
    assert curve[-1] < 1e-2 * losses[grids[-1], "scaled"] and curve[-1] < 1e-2 * losses[grids[-1], "one S"], losses


def test_sample_passes_s_and_calls_a_guidance_distilled_student_once_per_step():
    model = Recorder((1, 2, 4), True)
    label = torch.zeros(3, dtype=torch.long)
    mf.sample(model, n_steps=4, shape=(3, 2), guidance=1.5, null_cond={"label": 9}, label=label)
    assert len(model.calls) == 4 and all(c["batch"] == 3 for c in model.calls)
    assert all(c["student_steps"].tolist() == [4] * 3 and c["guidance"].tolist() == [1.5] * 3 for c in model.calls)
    plain = Recorder((1, 2))
    mf.sample(plain, n_steps=2, shape=(3, 2), guidance=1.5, null_cond={"label": 9}, label=label)
    assert len(plain.calls) == 2
    assert all(c["batch"] == 6 and c["student_steps"].tolist() == [2] * 6 for c in plain.calls)
    assert all("guidance" not in c for c in plain.calls)
    with pytest.raises(ValueError, match=r"n_steps: expected one of \(1, 2, 4\).*got 3"):
        mf.sample(model, n_steps=3, shape=(3, 2))


@pytest.mark.parametrize("net", ["mlp", "uvit"])
def test_a_student_from_its_teacher_starts_as_the_teacher_for_every_s_and_w(net):
    torch.manual_seed(0)
    if net == "mlp":
        teacher = MLPNet(dim=3, classes=4)
        student = MLPNet(dim=3, classes=4, student_steps=(2, 4), guidance_distilled=True)
        z = torch.randn(5, 3)
    else:
        teacher = uvit("tiny", in_channels=1, num_classes=4)
        student = uvit("tiny", in_channels=1, num_classes=4, student_steps=(2, 4), guidance_distilled=True)
        z = torch.randn(5, 1, 8, 8)
    torch.nn.init.normal_(teacher.state_dict()[next(k for k in teacher.state_dict() if "out" in k and "weight" in k)])
    load_teacher_weights(student, teacher)
    logsnr, label = torch.linspace(-5, 5, 5), torch.arange(5) % 4
    expected = teacher(z, logsnr, label)
    for s, w in ((2, 0.0), (4, 3.0)):
        out = student(z, logsnr, label, student_steps=torch.full((5,), s), guidance=torch.full((5,), w))
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="student_steps: expected a \\[5\\] integer tensor"):
        student(z, logsnr, label, student_steps=None, guidance=torch.zeros(5))
    with pytest.raises(ValueError, match="student_steps: this network was built for one step count"):
        teacher(z, logsnr, label, student_steps=torch.full((5,), 2))
    with pytest.raises(ValueError, match="guidance: this network was not trained with guidance"):
        teacher(z, logsnr, label, guidance=torch.zeros(5))


@pytest.mark.parametrize("kwargs, message", [
    ({"student_steps": (2, 2)}, "student_steps: expected distinct step counts"),
    ({"student_steps": ()}, "student_steps: expected a non-empty tuple"),
    ({"student_steps": (1, 0)}, "student_steps: expected a non-empty tuple of integers >= 1"),
    ({"student_steps": (1, 2), "steps_probs": (1,)}, "steps_probs: expected 2 weights"),
    ({"student_steps": (1, 2), "steps_probs": (0, 0)}, "steps_probs: expected 2 weights >= 0 .* positive sum"),
    ({"guidance": (2, 1), "null_label": 3}, r"guidance: expected a range \(lo, hi\)"),
    ({"guidance": (0, float("inf")), "null_label": 3}, r"guidance: expected a range"),
    ({"guidance": (0, 4)}, "null_label: expected the null class index"),
    ({"student_steps": (4, 32), "teacher_steps": 16}, "teacher_steps: expected start and end >= student_steps=32"),
])
def test_bad_options_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mf.MCMObjective(SCHED, **kwargs)


def test_guidance_needs_a_teacher_and_n_seg_one_per_s():
    obj = mf.MCMObjective(SCHED, guidance=(0, 2), null_label=1, teacher_steps=8)
    with pytest.raises(ValueError, match="teacher: distilling guidance"):
        obj(Recorder(guidance_distilled=True), torch.randn(4, 2), teacher=None)
    multi = mf.MCMObjective(SCHED, student_steps=(1, 2), teacher_steps=8)
    with pytest.raises(ValueError, match=r"n_seg: expected a tuple of 2"):
        multi.loss_at(Recorder((1, 2)), torch.randn(4, 2), (8,), teacher=Recorder())


def test_one_checkpoint_trains_samples_and_scores_at_every_s(tmp_path, capsys):
    teacher_cfg = load_config("tiny-teacher", {"steps": 2, "data": {"resolution": 8}, "eval_samples": 4})
    train(teacher_cfg, tmp_path / "teacher", progress=False)
    cfg = load_config("tiny-cd", {"steps": 2, "teacher": str(tmp_path / "teacher"), "data": {"resolution": 8},
                                  "eval_samples": 4, "objective": {"student_steps": [1, 2, 4], "teacher_steps": 8,
                                                                   "guidance": [0, 4]}})
    train(cfg, tmp_path / "student", progress=False)
    model, _, _ = load_model(tmp_path / "student")
    assert model.student_steps == (1, 2, 4) and model.guidance_distilled
    assert main(["eval", "--ckpt", str(tmp_path / "student"), "--steps", "1,2,4", "--n", "8", "--guidance", "2",
                 "--out", str(tmp_path / "eval")]) == 0
    assert [row["steps"] for row in json.loads((tmp_path / "eval" / "eval.json").read_text())] == [1, 2, 4]
    assert main(["sample", "--ckpt", str(tmp_path / "student"), "--steps", "2", "--n", "4", "--guidance", "1",
                 "--out", str(tmp_path / "grid.png")]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(tmp_path / "student"), "--steps", "3", "--n", "4",
                 "--out", str(tmp_path / "bad.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "n_steps: expected one of (1, 2, 4)" in err and len(err.splitlines()) == 1


def test_one_2d_student_beats_the_teachers_ddim_at_2_and_4_steps():
    from experiments.mixture_2d import distill, evaluate, train_teacher

    teacher = train_teacher(iters=1200, seed=0, hidden=128, batch=512)
    student = distill(teacher, (1, 2, 4), iters=800, seed=0, batch=512)
    rows = evaluate(teacher, {2: student, 4: student}, n=10_000, seed=0, steps=(2, 4), reference_steps=None)
    assert rows["MCM (CD)", 4] < rows["teacher DDIM", 4], rows
    assert rows["MCM (CD)", 2] < rows["teacher DDIM", 2], rows
