"""The MNIST demo end to end at a tiny budget, and the claim it prints (student against teacher)."""
import pytest

from mcm_fast.demo import claim, run


def test_claim_compares_the_student_with_its_teacher():
    rows = [{"model": "MCM (S=4)", "sampler": "ddim", "steps": 4, "fd_mnist": 70.0},
            {"model": "teacher", "sampler": "ddim", "steps": 4, "fd_mnist": 140.0},
            {"model": "teacher", "sampler": "addim", "steps": 4, "fd_mnist": 100.0},
            {"model": "teacher", "sampler": "ddim", "steps": 64, "fd_mnist": 60.0},
            {"model": "teacher", "sampler": "addim", "steps": 64, "fd_mnist": 56.0}]
    lines = claim(rows)
    assert "50% lower than with DDIM" in lines[0] and "30% lower than with ADDIM" in lines[1]
    assert "+25%" in lines[2]  # 70 against the best 64-step teacher, 56


def test_the_demo_runs_end_to_end_and_resumes(tmp_path):
    printed = []
    rows = run(tmp_path, teacher_iters=2, student_iters=2, n=40, progress=False, echo=printed.append)
    assert [(r["model"], r["sampler"], r["steps"]) for r in rows] == [
        ("MCM (S=4)", "ddim", 4), ("teacher", "ddim", 4), ("teacher", "addim", 4), ("teacher", "ddim", 64),
        ("teacher", "addim", 64)]
    assert all(r["fd_mnist"] > 0 and 0 <= r["precision"] <= 1 for r in rows)
    assert any("student against its teacher" in line for line in printed)
    assert (tmp_path / "mcm-ddim-4.png").is_file() and (tmp_path / "teacher-addim-64.png").is_file()
    again = run(tmp_path, teacher_iters=2, student_iters=2, n=40, progress=False, echo=lambda line: None)
    assert [r["fd_mnist"] for r in again] == pytest.approx([r["fd_mnist"] for r in rows])
