"""The `mcm-fast` command: help on every subcommand, sample/eval/bench on a tiny checkpoint, one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mcm_fast.cli import main
from mcm_fast.train.config import load_config
from mcm_fast.train.loop import train

TINY = {"preset": "tiny-teacher", "data": {"resolution": 8}, "optim": {"batch_size": 8}, "steps": 2,
        "eval_samples": 20, "sample_steps": 2}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(load_config(TINY), out, progress=False)
    return out


@pytest.mark.parametrize("command", [[], ["demo"], ["train"], ["sample"], ["eval"], ["bench"]])
def test_every_subcommand_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "example" in capsys.readouterr().out


def test_python_dash_m_runs_the_command():
    result = subprocess.run([sys.executable, "-m", "mcm_fast", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "demo" in result.stdout and "train" in result.stdout


def test_sample_writes_a_grid_with_one_column_per_class(run_dir, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(run_dir), "--steps", "2", "--n", "20", "--out", str(out)]) == 0
    picture = np.asarray(Image.open(out))
    assert picture.shape == (2 * 9 + 1, 10 * 9 + 1)  # 2 rows of 10 images of 8x8 with 1-pixel borders
    assert main(["sample", "--ckpt", str(run_dir), "--steps", "2", "--n", "4", "--label", "3", "--sampler", "ddim",
                 "--scale", "2", "--out", str(tmp_path / "threes.png")]) == 0


def test_eval_prints_one_row_per_step_count(run_dir, capsys):
    assert main(["eval", "--ckpt", str(run_dir), "--steps", "1,2", "--n", "30"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("steps 1  fd_mnist") and lines[-1].startswith("steps 2  fd_mnist")


def test_eval_out_writes_the_table_plot_and_grids(run_dir, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--ckpt", str(run_dir), "--steps", "1,2", "--n", "20", "--out", str(out)]) == 0
    rows = json.loads((out / "eval.json").read_text())
    assert [r["steps"] for r in rows] == [1, 2] and all({"fd_mnist", "precision", "recall"} <= set(r) for r in rows)
    assert Image.open(out / "metric.png").size[0] > 100
    assert np.asarray(Image.open(out / "samples-2.png")).shape == (2 * 9 + 1, 10 * 9 + 1)


def test_bench_reports_train_and_sampling_throughput(capsys):
    assert main(["bench", "--config", "tiny-teacher", "--set", "data.resolution=8", "--batch", "4", "--iters", "1",
                 "--steps", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "train step (v-loss)" in out and "sampling, 2 step(s)" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "tiny-teacher", "--out", "x", "--set", "optim.lrr=1"], "optim.lrr: unknown key"),
    (["train", "--config", "nope", "--out", "x"], "--config: expected a preset"),
    (["sample", "--ckpt", "/no/such/run", "--out", "x.png"], "/no/such/run"),
    (["eval", "--ckpt", "/no/such/run"], "/no/such/run"),
])
def test_bad_input_is_one_line_and_exit_status_1(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_flags_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--ckpt", "x", "--steps", "two"])
    assert "--steps" in capsys.readouterr().err


@pytest.fixture
def a_file(tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("not a directory")
    return file


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "tiny-teacher", "--out", "{tmp}/r", "--set", "optim.betas=[0.9]"], "optim.betas: expected"),
    (["train", "--config", "tiny-teacher", "--out", "{tmp}/r", "--set", "optim.grad_clip=-1"], "optim.grad_clip:"),
    (["train", "--config", "tiny-teacher", "--out", "{file}"], "is a file; expected"),
    (["train", "--config", "tiny-teacher", "--out", "{file}/run"], "is a file; expected"),
    (["train", "--config", "{tmp}/deep.json", "--out", "{tmp}/r"], "nested too deeply"),
    (["train", "--config", "tiny-teacher", "--out", "{tmp}/r", "--set", "steps=1", "--set", "steps.x=2"],
     "steps was set"),
    (["bench", "--set", "optim.lr=-1"], "optim.lr: expected a finite number > 0"),
    (["sample", "--ckpt", "{run}", "--steps", "1", "--n", "2", "--out", "{file}/grid.png"],
     "{file}: a file; expected a directory"),
    (["sample", "--ckpt", "{run}", "--steps", "1", "--n", "2", "--out", "{tmp}"],
     "{tmp}: a directory; expected the path of a file"),
    (["sample", "--ckpt", "{run}", "--steps", "1", "--n", "2", "--label", "99", "--out", "{tmp}/g.png"], "label:"),
    (["sample", "--ckpt", "{run}", "--steps", "1000000", "--n", "2", "--out", "{tmp}/g.png"], "n_steps: expected"),
    (["sample", "--ckpt", "{file}", "--out", "{tmp}/g.png"], "expected a run directory"),
    (["eval", "--ckpt", "{run}", "--steps", "1", "--n", "20", "--out", "{file}"],
     "{file}: a file; expected a directory"),
    (["eval", "--ckpt", "{run}", "--steps", "1", "--n", "2"], "n"),
])
def test_every_failure_is_one_line_and_exit_status_1(argv, message, run_dir, a_file, tmp_path, capsys):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    fill = {"{tmp}": str(tmp_path), "{file}": str(a_file), "{run}": str(run_dir)}
    for key, value in fill.items():
        argv = [arg.replace(key, value) for arg in argv]
        message = message.replace(key, value)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mcm-fast {argv[0]}: ") and message in err, err
    assert "Traceback" not in err and "unexpected" not in err


def test_an_unexpected_failure_is_still_one_line(monkeypatch, capsys):
    import mcm_fast.commands.bench

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(mcm_fast.commands.bench, "bench", broken)
    assert main(["bench"]) == 1
    assert capsys.readouterr().err == "mcm-fast bench: unexpected KeyError: 'a bug'\n"


def test_no_traceback_reaches_the_terminal(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mcm_fast", "train", "--config", "tiny-teacher", "--out",
                             str(tmp_path), "--set", "optim.ema_decay=2"], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "optim.ema_decay" in result.stderr


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    import mcm_fast.commands.bench

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mcm_fast.commands.bench, "bench", interrupted)
    assert main(["bench"]) == 130
    assert capsys.readouterr().err == "mcm-fast bench: interrupted\n"
