"""experiments/any_teacher.py end to end at its smoke scale: every teacher and student trains, is scored once
(scores.json), the table is written, and a second call trains nothing."""
import json

import pytest

pytest.importorskip("diffusers")

from experiments.any_teacher import SCALES, TEACHERS, main, scored  # noqa: E402


def test_smoke_scale_writes_the_table_and_resumes(tmp_path):
    main(["--scale", "smoke", "--out", str(tmp_path)])
    scores = scored(SCALES["smoke"], 0, tmp_path)
    assert set(scores) == {n for t in TEACHERS for n in (t, f"{t}-cd-S2")}
    assert all(row["fd_mnist"] > 0 for rows in scores.values() for row in rows)
    (tmp_path / "seed0" / "flow-uvit-cd-S2" / "scores.json").write_text(json.dumps([{"steps": 2, "sampler": "mcm",
                                                                                  "fd_mnist": 123.0}]))
    main(["--scale", "smoke", "--out", str(tmp_path)])  # resumes: trains nothing, rescoring nothing
    text = (tmp_path / "tables.md").read_text()
    assert "| flow-uvit | MCM CD | 123.0 |" in text and "| v-unet | teacher, aDDIM |" in text
