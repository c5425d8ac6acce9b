"""experiments/floor.py end to end at its smoke scale: students of a teacher run, one setting changed each, scored
at every S and every step during training, resumed without retraining, and the ledger's table from the rows."""
import json

import pytest

from experiments import floor, results
from experiments.pretrained import STUDENT_STEPS
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import train


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A two-step tiny-res teacher at 8x8 where the study looks for seed 0's: TEACHERS/seed0/teacher."""
    root = tmp_path_factory.mktemp("teachers")
    train(load_config("tiny-teacher", {"model": "tiny-res", "steps": 2, "data": {"resolution": 8},
                                       "eval_samples": 20}), root / "seed0" / "teacher", progress=False)
    return root


def flat(config) -> dict:
    """{dotted key: value} of a config's settings."""
    return {f"{k}.{j}" if isinstance(v, dict) else k: w for k, v in config.to_dict().items()
            for j, w in (v.items() if isinstance(v, dict) else [(None, v)])}


def test_each_run_changes_one_setting_of_the_base(tmp_path):
    base = flat(floor.student_config("base", tmp_path, 0, floor.SCALES["full"]))
    assert base["steps"] == 1000 and base["cooldown"] == 250 and base["sample_steps"] == floor.EVAL_STEPS
    assert base["objective.student_steps"] == list(STUDENT_STEPS) and base["eval_samples"] == floor.EVAL_N
    for name in floor.RUNS:
        config = flat(floor.student_config(name, tmp_path, 0, floor.SCALES["full"]))
        changed = [key for key, value in config.items() if base.get(key) != value]
        assert len(changed) == (name != "base"), (name, changed)


def test_smoke_scale_trains_scores_resumes_and_renders(tmp_path, teachers):
    out = tmp_path / "floor"
    floor.main(["--scale", "smoke", "--teachers", str(teachers), "--out", str(out), "--runs", "base,ddim-teacher"])
    cache = out / "seed0" / "base" / "scores" / "step-000000002" / "scores.json"
    rows = json.loads(cache.read_text())
    assert [(r["steps"], r["sampler"]) for r in rows] == [(s, "mcm") for s in STUDENT_STEPS]
    marked = [{**r, "fd_mnist": 1e4} for r in rows]
    cache.write_text(json.dumps(marked))
    floor.main(["--scale", "smoke", "--teachers", str(teachers), "--out", str(out), "--runs", "base"])
    assert json.loads(cache.read_text()) == marked  # resumed: neither retrained nor rescored

    ledger = tmp_path / "results.csv"
    results.add("floor", out, ledger)
    results.add("pretrained", teachers, ledger)
    rows = results.read(ledger)
    text = results.render("<!-- results: floor -->\n<!-- /results -->", rows)
    best = min(r["fd_mnist"] for r in rows if r["table"] == "pretrained")
    assert f"| base | - | 0 | {' | '.join(['10000.00'] * len(STUDENT_STEPS))} | {1e4 / best:.2f}x |" in text
    evals = [r for r in rows if r["run"] == "ddim-teacher" and r["sampler"] == "eval"]
    assert [r["training_steps"] for r in evals] == [1, 2] and "| ddim-teacher | the teacher's DDIM" in text


def test_a_missing_teacher_or_run_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        floor.main(["--scale", "smoke", "--teachers", str(tmp_path), "--out", str(tmp_path / "floor")])
    assert "--teachers: expected a teacher run at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        floor.main(["--runs", "base,wider"])
    assert "--runs: expected names among base" in capsys.readouterr().err
