"""experiments/multi_step.py end to end at its smoke scale: the multi-S student is scored at every S, the
guided students at every w with their calls, and the report has both tables."""
import json

from experiments.mnist_tables import SCALES
from experiments.multi_step import GUIDANCE, main, runs


def test_smoke_scale_scores_every_s_and_every_guidance_scale(tmp_path):
    main(["--scale", "smoke", "--out", str(tmp_path)])
    seed = tmp_path / "seed0"
    multi = json.loads((seed / "cd-multi" / "scores.json").read_text())
    assert [row["steps"] for row in multi] == list(SCALES["smoke"].student_steps)
    distilled = json.loads((seed / "cd-guided-S2" / "scores.json").read_text())  # smoke: S = 1, 2; guided at 2
    two_call = json.loads((seed / "cd-S2" / "guided" / "scores.json").read_text())
    assert [row["guidance"] for row in distilled] == list(GUIDANCE) == [row["guidance"] for row in two_call]
    assert [row["calls"] for row in distilled] == [2] * 4  # counted, one per step
    assert [row["calls"] for row in two_call] == [2, 4, 4, 4]  # w = 0 needs no unconditional call
    text = (tmp_path / "multi_step.md").read_text()
    assert "### One student for every S" in text and "### Guidance at S = 2" in text
    assert [run.name for run in runs(SCALES["smoke"])][-2:] == ["cd-multi", "cd-guided-S2"]
    main(["--scale", "smoke", "--out", str(tmp_path), "--report"])
    assert (tmp_path / "multi_step.md").read_text() == text
