"""The results ledger (experiments/results.py): scores of run directories into rows, rows replaced not doubled,
and docs/results.md's tables equal to what the ledger renders (so that neither drifts from the other)."""
import json

import pytest

from experiments import results


def run_tree(root, fd=50.0):
    """Two seeds of a study: a run with a final score and two periodic ones, and a guided sub-run."""
    for seed, shift in ((0, 0.0), (1, 10.0)):
        run = root / f"seed{seed}" / "cd-S4"
        (run / "guided").mkdir(parents=True)
        (run / "scores.json").write_text(json.dumps([{"steps": 4, "sampler": "mcm", "fd_mnist": fd + shift,
                                                      "precision": 0.7, "recall": 0.8, "seconds": 3.0}]))
        (run / "guided" / "scores.json").write_text(json.dumps([{"steps": 4, "sampler": "w=1", "guidance": 1.0,
                                                                 "calls": 8, "fd_mnist": 40.0 + shift}]))
        (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in (
            {"step": 10, "loss": 1.0}, {"step": 250, "eval": {"steps": 4, "fd_mnist": 90.0}},
            {"step": 500, "eval": {"steps": 4, "fd_mnist": 70.0}}, {"step": 500, "loss": 0.5})) + "\n")


def test_runs_become_rows_with_their_training_steps(tmp_path):
    run_tree(tmp_path / "out")
    ledger = tmp_path / "results.csv"
    assert results.add("tables", tmp_path / "out", ledger) == 8
    rows = results.read(ledger)
    final = [r for r in rows if r["sampler"] == "mcm"]
    assert [(r["seed"], r["fd_mnist"], r["training_steps"], r["run"]) for r in final] == [
        (0, 50.0, 500, "cd-S4"), (1, 60.0, 500, "cd-S4")]
    assert final[0]["ode_error"] is None and final[0]["precision"] == 0.7 and "seconds" not in final[0]
    evals = [(r["seed"], r["training_steps"], r["fd_mnist"]) for r in rows if r["sampler"] == "eval"]
    assert evals == [(0, 250, 90.0), (0, 500, 70.0), (1, 250, 90.0), (1, 500, 70.0)]
    guided = [r for r in rows if r["run"] == "cd-S4/guided"]
    assert [(r["guidance"], r["calls"], r["training_steps"]) for r in guided] == [(1.0, 8, 500)] * 2
    assert all(r["commit"] for r in rows)


def test_a_checkpoints_scores_are_rows_at_its_step_and_guidance_tells_rows_apart(tmp_path):
    """experiments/pretrained.py caches scores per checkpoint (RUN/scores/step-N/scores.json): each is a row set
    at step N, the run's log read once; rows that differ only in guidance w are kept apart."""
    run = tmp_path / "out" / "seed2" / "mcm"
    for step in (2000, 2500):
        (run / "scores" / f"step-{step:09d}").mkdir(parents=True)
        (run / "scores" / f"step-{step:09d}" / "scores.json").write_text(json.dumps(
            [{"steps": 4, "sampler": "mcm", "fd_mnist": step / 100}, {"steps": 4, "sampler": "mcm", "guidance": 1.0,
                                                                       "fd_mnist": 60.0}]))
    (run / "log.jsonl").write_text(json.dumps({"step": 2500, "eval": {"steps": 4, "fd_mnist": 9.0}}) + "\n")
    ledger = tmp_path / "results.csv"
    assert results.add("pretrained", tmp_path / "out", ledger) == 5
    rows = results.read(ledger)
    assert {(r["run"], r["seed"]) for r in rows} == {("mcm", 2)}
    assert sorted((r["training_steps"], r["sampler"], r["guidance"] or 0, r["fd_mnist"]) for r in rows) == [
        (2000, "mcm", 0, 20.0), (2000, "mcm", 1.0, 60.0), (2500, "eval", 0, 9.0), (2500, "mcm", 0, 25.0),
        (2500, "mcm", 1.0, 60.0)]


def test_the_pretrained_seeds_table_reads_each_seed_against_its_own_teacher():
    """Two seeds whose numbers are known: the means, spreads and goals counted by hand."""
    from experiments.pretrained import seeds_table

    def seed(teacher_best, student):
        teacher = [{"steps": n, "sampler": s, "fd_mnist": 100.0 / n + teacher_best} for s in ("ddim", "addim")
                   for n in (1, 2, 4, 8, 16)]
        return {"teacher": teacher + [{"steps": 256, "sampler": "addim", "fd_mnist": teacher_best}],
                "mcm": [{"steps": n, "sampler": "mcm", "fd_mnist": fd} for n, fd in zip((1, 2, 4, 8, 16), student)]}

    text = seeds_table([seed(10.0, [19.0, 14.0, 10.5, 9.9, 9.8]), seed(8.0, [17.0, 11.0, 9.0, 8.4, 15.0])])
    assert text.startswith("2 training seeds")
    assert "| 4 | 34.0 ± 1.4 (35.0 / 33.0) | 34.0 ± 1.4 (35.0 / 33.0) | 9.8 ± 1.1 (10.5 / 9.0) |" in text
    assert "| 256 | - | 9.0 ± 1.4 (10.0 / 8.0) | - |" in text
    assert "The teacher's best (any sampler, up to 256 steps): 9.00 ± 1.41 (10.00 / 8.00)." in text
    assert "| 8 steps at or below the teacher's best | 0.99x / 1.05x | 1 of 2 seeds |" in text
    assert "| 4 steps within 10% of the teacher's best | 1.05x / 1.12x | 1 of 2 seeds |" in text
    assert "| 2 steps within 30% of the teacher's best | 1.40x / 1.38x | 0 of 2 seeds |" in text
    assert "| 1 step within 2x of the teacher's best | 1.90x / 2.12x | 1 of 2 seeds |" in text
    assert "| 1, 2, 4, 8, 16 / 1, 2, 4, 8 steps | 1 of 2 seeds |" in text  # 15.0 above the teacher's 14.25 at 16
    assert "| falls / rises after 8 | 1 of 2 seeds |" in text


def test_adding_again_replaces_rows_and_keeps_other_tables(tmp_path):
    ledger = tmp_path / "results.csv"
    run_tree(tmp_path / "a")
    results.add("tables", tmp_path / "a", ledger)
    run_tree(tmp_path / "b", fd=20.0)
    results.add("tables", tmp_path / "b", ledger)
    results.add("any_teacher", tmp_path / "a", ledger)
    rows = results.read(ledger)
    assert len(rows) == 16
    assert [r["fd_mnist"] for r in rows if r["table"] == "tables" and r["sampler"] == "mcm"] == [20.0, 30.0]
    assert [r["fd_mnist"] for r in rows if r["table"] == "any_teacher" and r["sampler"] == "mcm"] == [50.0, 60.0]


def test_adding_again_keeps_the_commit_of_unchanged_rows(tmp_path):
    """A study resumed later re-adds its old runs: their rows keep the commit they were recorded at; a changed
    score takes the new one."""
    ledger = tmp_path / "results.csv"
    run_tree(tmp_path / "a")
    results.add("tables", tmp_path / "a", ledger)
    results.write([{**r, "commit": "0000000"} for r in results.read(ledger)], ledger)  # recorded at an old commit
    scores = tmp_path / "a" / "seed1" / "cd-S4" / "scores.json"
    scores.write_text(scores.read_text().replace("60.0", "61.5"))
    results.add("tables", tmp_path / "a", ledger)
    commits = {(r["seed"], r["sampler"], r["training_steps"]): r["commit"] for r in results.read(ledger)}
    assert commits[1, "mcm", 500] != "0000000"
    assert {c for key, c in commits.items() if key != (1, "mcm", 500)} == {"0000000"}


def test_per_seed_groups_final_scores_as_the_reports_take_them(tmp_path):
    run_tree(tmp_path / "out")
    ledger = tmp_path / "results.csv"
    results.add("tables", tmp_path / "out", ledger)
    seeds = results.per_seed(results.read(ledger), "tables", {"cd-S4/guided": "cd-two-call"})
    assert [sorted(s) for s in seeds] == [["cd-S4", "cd-two-call"]] * 2
    assert seeds[1]["cd-S4"] == [{"table": "tables", "run": "cd-S4", "seed": 1, "steps": 4, "sampler": "mcm",
                                  "fd_mnist": 60.0, "precision": 0.7, "recall": 0.8, "training_steps": 500,
                                  "commit": seeds[1]["cd-S4"][0]["commit"]}]


def test_render_fills_named_blocks_and_refuses_unknown_names():
    rows = results.read()
    text = "intro\n<!-- results: any_teacher -->\nstale\n<!-- /results -->\nafter\n"
    rendered = results.render(text, rows)
    assert rendered.startswith("intro\n<!-- results: any_teacher -->\n### FD-MNIST at S network calls")
    assert "stale" not in rendered and rendered.endswith("<!-- /results -->\nafter\n")
    assert results.render(rendered, rows) == rendered
    with pytest.raises(ValueError, match="^results: no renderer 'nope'"):
        results.render("<!-- results: nope -->\n<!-- /results -->", rows)


def test_the_results_doc_is_what_the_ledger_renders():
    text = results.DOC.read_text()
    names = [m.group(2) for m in results.BLOCK.finditer(text)]
    assert {"tables", "any_teacher", "multi_step"} <= set(names), names
    assert results.render(text, results.read()) == text, "run python -m experiments.results render"


def test_the_ledger_reproduces_the_reports_of_its_runs():
    """Spot values of the three studies, as their reports printed them when the runs were in git."""
    rows = results.read()
    tables = results.RENDERERS["tables"](rows)
    assert "the teacher with 256 aDDIM steps: 71.1 ± 7.6" in tables
    assert "| five students, 2000 steps each | 970.0 | 139.0 | 99.4 | 88.3 | 83.8 |" in results.RENDERERS[
        "multi_step"](rows)
    assert "| v-unet | teacher, aDDIM | 49.9 | 18.7 | 13.7 | 15.2 |" in results.RENDERERS["any_teacher"](rows)
