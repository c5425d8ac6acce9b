"""experiments/backbone.py end to end at its smoke scale: every backbone's teacher and the students of STUDENTS
train and are scored once, the table names parameters, multiply-adds and the students against their teacher's
best, and each stage runs alone; experiments/fd_noise.py scores independent sample sets of those runs."""
import json

import pytest

pytest.importorskip("diffusers")

from experiments import fd_noise, results  # noqa: E402
from experiments.backbone import BACKBONES, SCALES, STUDENTS, main, scored  # noqa: E402


def test_smoke_scale_stages_write_the_table_and_resume(tmp_path):
    main(["--scale", "smoke", "--out", str(tmp_path), "--stage", "students"])  # no teacher scored: nothing to do
    assert not (tmp_path / "seed0").exists()
    main(["--scale", "smoke", "--out", str(tmp_path), "--stage", "teachers"])
    assert set(scored(SCALES["smoke"], tmp_path)[0]) == set(BACKBONES)
    main(["--scale", "smoke", "--out", str(tmp_path)])
    students = {f"{name}-cd-S{s}" for name, steps in STUDENTS.items() for s in steps}
    rows = scored(SCALES["smoke"], tmp_path)[0]
    assert set(rows) == set(BACKBONES) | students
    assert all(row["parameters"] > 0 and row["macs_per_image"] > 0 for name in BACKBONES for row in rows[name])
    name, (s, *_) = next(iter(STUDENTS.items()))
    student = tmp_path / "seed0" / f"{name}-cd-S{s}" / "scores.json"
    student.write_text(json.dumps([{"steps": s, "sampler": "mcm", "fd_mnist": 1e4, "precision": 0.5,
                                    "recall": 0.5}]))
    main(["--scale", "smoke", "--out", str(tmp_path)])  # resumes: trains nothing, rescoring nothing
    text = (tmp_path / "backbone.md").read_text()
    assert f"| {name} | {s} | 10000.0 | 0.500 / 0.500 |" in text and "| unet | 0.687M |" in text

    # experiments/fd_noise.py on these runs: each eval seed its own noises (different FDs), the table their mean
    # and spread, and a rerun rescoring nothing
    fd_noise.main(["--scale", "smoke", "--runs", str(tmp_path), "--out", str(tmp_path / "noise")])
    rows = results.collect("fd_noise", tmp_path / "noise")
    assert {(r["run"], r["seed"]) for r in rows} == {(f"{m}-n{n}", s) for m in fd_noise.MODELS
                                                      for n, seeds in fd_noise.SCALES["smoke"].items() for s in seeds}
    pair = [r["fd_mnist"] for r in rows if r["run"] == "teacher-ddim8-n20"]
    assert len(pair) == 2 and pair[0] != pair[1]
    text = fd_noise.table(rows, fd_noise.SCALES["smoke"])
    assert f"| teacher-ddim8 | 20 | {pair[0]:.2f} / {pair[1]:.2f} |" in text
    marker = tmp_path / "noise" / "seed1" / "student-S8-n40" / "scores.json"
    marker.write_text(json.dumps([{"steps": 8, "sampler": "mcm", "fd_mnist": 1e4, "precision": 0.5, "recall": 0.5}]))
    fd_noise.main(["--scale", "smoke", "--runs", str(tmp_path), "--out", str(tmp_path / "noise")])
    assert json.loads(marker.read_text())[0]["fd_mnist"] == 1e4  # resumed: nothing rescored
