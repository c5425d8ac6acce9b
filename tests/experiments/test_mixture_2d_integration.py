"""Integration: on the 2-D ring, distilled 2- and 4-step MCMs beat their teacher's DDIM at the same step
counts (sliced W2 to fresh true samples). A small teacher and short runs: about half a minute on 2 cores."""
from experiments.mixture_2d import distill, evaluate, train_teacher


def test_few_step_mcm_beats_the_teachers_ddim_at_the_same_budget():
    teacher = train_teacher(iters=1200, seed=0, hidden=128, batch=512)
    students = {steps: distill(teacher, steps, iters=500, seed=0, batch=512) for steps in (2, 4)}
    rows = evaluate(teacher, students, n=10_000, seed=0, steps=(2, 4), reference_steps=None)
    assert rows["MCM (CD)", 4] < rows["teacher DDIM", 4], rows
    assert rows["MCM (CD)", 2] < rows["teacher DDIM", 2], rows
