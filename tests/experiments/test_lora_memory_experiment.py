"""experiments/lora_memory.py at its smoke scale: each run trains in its own process whose peak memory is read, a
LoRA student is estimated below a full one, measured runs are kept on a rerun, and the ledger renders the table."""
import json

import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")

from experiments import lora_memory, results  # noqa: E402


def test_smoke_scale_measures_each_run_and_resumes(tmp_path):
    out = tmp_path / "memory"
    lora_memory.main(["--scale", "smoke", "--out", str(out), "--threads", "1"])
    rows = {name: json.loads((out / "seed0" / name / "scores.json").read_text())[0]
            for name in ("baseline", *lora_memory.RUNS)}
    assert all(0.1 < row["peak_gib"] < 20 for row in rows.values())
    assert rows["lora-student"]["estimate_gib"] < rows["teacher"]["estimate_gib"] < rows["full-student"]["estimate_gib"]
    assert len({row["parameters"] for name, row in rows.items() if name != "baseline"}) == 1
    config = json.loads((out / "lora-student.json").read_text())
    assert config["lora_rank"] == lora_memory.RANK and config["optim"]["batch_size"] == 4
    assert (out / "full-student" / "step-000000001").is_dir()  # trained: one step at the smoke scale

    marker = out / "seed0" / "teacher" / "scores.json"
    marker.write_text(json.dumps([{**rows["teacher"], "peak_gib": 9.5}]))
    lora_memory.main(["--scale", "smoke", "--out", str(out), "--threads", "1"])
    assert json.loads(marker.read_text())[0]["peak_gib"] == 9.5  # measured once, kept

    ledger = tmp_path / "results.csv"
    results.add("lora_memory", out, ledger)
    text = results.render("<!-- results: lora_memory -->\n<!-- /results -->", results.read(ledger))
    base = rows["baseline"]["peak_gib"]
    assert f"The baseline process (imports, the cache): {base:.2f} GiB." in text
    assert f"| teacher | {lora_memory.RUNS['teacher'][0]} | 0.8M | 9.50 | {9.5 - base:.2f} |" in text
