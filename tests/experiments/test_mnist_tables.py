"""experiments/mnist_tables.py end to end at its smoke scale: every run trains, is scored once (scores.json),
and the tables a-f and the plots are written; a second call reuses the scores, also in a clone that has only
the scores and logs git keeps (no checkpoints); a run another live process holds is left to it."""
import json
import signal
import subprocess
import sys
from pathlib import Path

from experiments.mnist_tables import SCALES, claim, main, plan


def test_smoke_scale_writes_every_table_and_resumes(tmp_path, capsys):
    held = tmp_path / "seed0" / "cd-S1"
    with claim(held, wait=False) as mine:  # as another process running the same seed would
        assert mine
        main(["--scale", "smoke", "--out", str(tmp_path)])
    assert "cd-S1 is another process's" in capsys.readouterr().out and not (held / "scores.json").exists()
    assert (tmp_path / "seed0" / "cd-S2" / "scores.json").is_file()
    main(["--scale", "smoke", "--out", str(tmp_path)])  # trains what is left: cd-S1
    text = (tmp_path / "tables.md").read_text()
    for title in ("### a.", "### b.", "### c.", "### d.", "### e.", "### f."):
        assert title in text, f"{title} missing from tables.md"
    for plot in ("fd-vs-steps.png", "training-curves.png", "fd-vs-training-steps.png"):
        assert (tmp_path / plot).is_file(), plot
    runs = ["teacher"] + [run.name for run in plan(SCALES["smoke"])]
    scores = {name: json.loads((tmp_path / "seed0" / name / "scores.json").read_text()) for name in runs}
    assert all(row["fd_mnist"] > 0 and 0 <= row["precision"] <= 1 for rows in scores.values() for row in rows)
    assert "ode_error" in scores["direct-S2"][0] and "ode_error" in scores["cd-S2"][0]
    assert [row["steps"] for row in scores["song-cd"]] == [1, 2]
    (tmp_path / "seed0" / "cd-S1" / "scores.json").write_text(json.dumps([{"steps": 1, "sampler": "mcm",
                                                                           "fd_mnist": 123.0}]))
    main(["--scale", "smoke", "--out", str(tmp_path)])  # resumes: trains nothing, rescoring nothing
    assert "| 123.0 |" in (tmp_path / "tables.md").read_text()  # one seed: no spread

    kept = {path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.name in ("scores.json", "log.jsonl")}
    for path in sorted(tmp_path.rglob("*"), reverse=True):  # what a fresh clone has: scores and logs only
        if path.is_file() and path.relative_to(tmp_path) not in kept:
            path.unlink()
    main(["--scale", "smoke", "--out", str(tmp_path)])
    assert {path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file()} == kept | {
        Path(name) for name in ("tables.md", "fd-vs-steps.png", "training-curves.png", "fd-vs-training-steps.png")}


def test_a_claim_is_exclusive_and_released_when_its_process_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from experiments.mnist_tables import claim\n"
                               "with claim(Path(sys.argv[1]), wait=False) as mine:\n"
                               "    print(mine, flush=True); time.sleep(600)", str(tmp_path)],
                              cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    with claim(tmp_path, wait=False) as mine:
        assert not mine
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with claim(tmp_path, wait=False) as mine:
        assert mine
