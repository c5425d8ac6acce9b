"""The training loop end to end on tiny runs: every kind trains, resumes exactly (also after a real process is
killed, during a save included), stops on a non-finite loss, and a 2-process DDP run equals one process."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mcm_fast.train.checkpoint import latest_checkpoint, load_checkpoint
from mcm_fast.train.config import ConfigError, TrainConfig, load_config
from mcm_fast.train.loop import NonFiniteLossError, Trainer, learning_rate, train

ROOT = Path(__file__).resolve().parents[2]
TINY = {"data": {"resolution": 8}, "optim": {"batch_size": 8, "warmup": 2}, "log_every": 1, "eval_samples": 20,
        "sample_steps": 2}


def tiny(preset="tiny-teacher", **changes):
    return load_config({"preset": preset, **TINY, **changes})


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def assert_same_run(a_dir: Path, b_dir: Path):
    """Two run directories logged the same losses and hold the same EMA weights, bit for bit."""
    assert losses(a_dir) == losses(b_dir)
    a, b = load_checkpoint(a_dir), load_checkpoint(b_dir)
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key


def cli(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mcm_fast", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(tiny(steps=4, save_every=2), out, progress=False)
    return out


def test_teacher_run_writes_checkpoints_log_grid_and_evaluation(teacher_dir):
    rows = [json.loads(line) for line in (teacher_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 for r in rows if "loss" in r)
    evaluation = [r["eval"] for r in rows if "eval" in r]
    assert len(evaluation) == 1 and evaluation[0]["fd_mnist"] > 0 and 0 <= evaluation[0]["recall"] <= 1
    assert (teacher_dir / "samples" / "step-000000004.png").is_file()
    state = load_checkpoint(teacher_dir)
    assert state["step"] == 4 and set(state) >= {"model", "ema", "optimizer", "config", "data_info"}
    assert state["data_info"] == {"shape": [1, 8, 8], "num_classes": 10}


def test_resumed_run_reproduces_the_uninterrupted_one(tmp_path, teacher_dir):
    for preset in ("tiny-teacher", "tiny-cd"):
        extra = {"teacher": str(teacher_dir)} if preset == "tiny-cd" else {}
        whole, parts = tmp_path / f"{preset}-whole", tmp_path / f"{preset}-parts"
        train(tiny(preset, steps=6, save_every=3, **extra), whole, progress=False)
        train(tiny(preset, steps=3, save_every=3, **extra), parts, progress=False)
        train(tiny(preset, steps=6, save_every=3, **extra), parts, progress=False)  # resumes at step 3
        assert_same_run(parts, whole)


def test_learning_rate_warms_up_holds_and_cools_down_to_a_last_step_that_still_moves():
    config = tiny(steps=10, cooldown=4, optim={"lr": 2.0, "warmup": 2})
    assert [learning_rate(config, step) for step in range(10)] == [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.5, 1.0, 0.5]
    assert [learning_rate(tiny(steps=4, optim={"lr": 2.0, "warmup": 0}), step) for step in range(4)] == [2.0] * 4


def test_a_run_resumed_with_a_cooldown_equals_one_trained_with_it(tmp_path):
    """cooldown may change on resume, as steps may: a run trained at a constant rate, then resumed with a
    cooldown over the steps it adds, is the run trained with that cooldown from the start (how a shipped
    student's constant-rate steps are reused, experiments/pretrained.py)."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(tiny(steps=6, cooldown=3, save_every=3), whole, progress=False)
    train(tiny(steps=3, save_every=3), parts, progress=False)
    train(tiny(steps=6, cooldown=3, save_every=3), parts, progress=False)
    rows = [json.loads(line) for line in (whole / "log.jsonl").read_text().splitlines()]
    lr = tiny().optim.lr
    assert [row["lr"] for row in rows if "lr" in row] == pytest.approx([lr / 2, lr, lr, lr, 2 * lr / 3, lr / 3])
    assert_same_run(parts, whole)


def test_a_run_whose_checkpoints_are_gone_restarts_with_a_log_of_its_own(tmp_path):
    whole, lost = tmp_path / "whole", tmp_path / "lost"
    train(tiny(steps=3, save_every=3), whole, progress=False)
    train(tiny(steps=2, save_every=2), lost, progress=False)
    shutil.rmtree(lost / "step-000000002")
    train(tiny(steps=3, save_every=3), lost, progress=False)
    assert (lost / "log.jsonl").read_text().count('"step": 1,') == 1 and losses(lost) == losses(whole)


def test_students_start_from_the_teacher_and_every_kind_trains(tmp_path, teacher_dir):
    teacher_ema = load_checkpoint(teacher_dir)["ema"]
    config = tiny("tiny-cd", steps=1, teacher=str(teacher_dir))
    trainer = Trainer(config, tmp_path / "init", progress=False)
    for key, value in teacher_ema.items():
        assert torch.equal(trainer.net.state_dict()[key], value), key
    for kind, extra in (("cd", {}), ("ct", {}), ("direct", {"objective": {"teacher_steps": 8}}),
                        ("cm", {"init": "random"}), ("ct", {"init": "random"})):
        out = tmp_path / f"{kind}-{len(extra)}"
        rows = train(tiny("tiny-cd", kind=kind, steps=2, teacher=str(teacher_dir), **extra), out, progress=False)
        assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows), kind
        assert latest_checkpoint(out).name == "step-000000002"


def test_a_student_deeper_in_the_middle_starts_as_its_teacher_and_other_networks_are_refused(tmp_path, teacher_dir):
    teacher = Trainer(tiny("tiny-cd", steps=1, teacher=str(teacher_dir)), tmp_path / "same", progress=False)
    deeper = Trainer(tiny("tiny-cd", steps=1, teacher=str(teacher_dir), model_options={"middle_blocks": 4}),
                     tmp_path / "deeper", progress=False)
    assert len(deeper.net.middle) == 4 and len(teacher.net.middle) == 2
    torch.manual_seed(0)
    z, t, label = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([0, 4, 10])
    expected = teacher.teacher(z, t, label=label)
    torch.testing.assert_close(deeper.model(z, t, label=label), expected, rtol=0, atol=0)
    loss = deeper.model(z, t, label=label).square().sum()
    loss.backward()
    assert deeper.net.middle[3].fc2.weight.grad.abs().sum() > 0  # the added blocks learn from the first step
    rows = train(tiny("tiny-cd", steps=2, teacher=str(teacher_dir), model_options={"middle_blocks": 3}),
                 tmp_path / "trained", progress=False)
    assert len(rows) == 2 and len(load_checkpoint(tmp_path / "trained")["ema"]) > len(teacher.net.state_dict())
    for options, init in (({"middle_blocks": 1}, "teacher"), ({"middle_channels": 64}, "teacher"),
                          ({"middle_blocks": 3, "emb_channels": 64}, "teacher"), ({"middle_blocks": 3}, "random")):
        with pytest.raises(ConfigError, match="^model_options: a student starts from its teacher's network"):
            Trainer(tiny("tiny-cd", steps=1, teacher=str(teacher_dir), model_options=options, init=init),
                    tmp_path / "refused", progress=False)


def test_points_train_with_the_mlp(tmp_path):
    config = load_config("ring-teacher", {"steps": 3, "data": {"n": 2000}, "optim": {"batch_size": 64},
                                          "eval_samples": 200, "sample_steps": 4})
    train(config, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["eval"]["sliced_w2"] > 0


def test_compiled_network_trains_like_the_eager_one(tmp_path):
    """compile: true compiles the whole loss; with eager random numbers (fallback_random) it is the same loss."""
    losses_by_mode = {}
    for compiled in (False, True):
        config = load_config("ring-teacher", {"steps": 3, "data": {"n": 2000}, "optim": {"batch_size": 64},
                                              "eval_samples": 200, "sample_steps": 4, "log_every": 1,
                                              "compile": compiled, "precision": "fp32"})
        with torch._inductor.config.patch(fallback_random=True):
            losses_by_mode[compiled] = [r["loss"] for r in train(config, tmp_path / str(compiled), progress=False)]
    assert losses_by_mode[True] == pytest.approx(losses_by_mode[False], rel=1e-5)


def test_bf16_autocast_trains_close_to_float32(tmp_path):
    rows = {p: train(tiny(steps=2, precision=p), tmp_path / p, progress=False) for p in ("fp32", "bf16")}
    fp32, bf16 = ([r["loss"] for r in rows[p]] for p in ("fp32", "bf16"))
    assert bf16 != fp32  # autocast ran in bfloat16
    assert bf16 == pytest.approx(fp32, rel=0.05)


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_cpu_precision_auto_is_bf16_where_the_cpu_has_native_bf16(tmp_path, precision):
    """precision auto autocasts to bf16 on CPUs with native bf16 (AVX-512 bf16 or AMX), else trains in fp32."""
    trainer = Trainer(tiny(steps=1, precision=precision), tmp_path, progress=False)
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    with trainer._autocast():
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
    assert dtype == (torch.bfloat16 if precision == "bf16" or (precision == "auto" and native) else torch.float32)


def test_distillation_defaults_are_the_measured_ones():
    """The defaults chosen from docs/results.md's runs (sqrt(snr+1) weighting); the paper's snr+1 one option away."""
    config = tiny("tiny-cd", teacher="unused")
    assert config.objective.weighting == "sqrt(snr+1)" and config.precision == "auto"
    assert load_config({"preset": "tiny-cd", "teacher": "x",
                        "objective": {"weighting": "snr+1"}}).objective.weighting == "snr+1"


def test_a_non_finite_loss_stops_the_run_and_keeps_the_checkpoint(tmp_path):
    trainer = Trainer(tiny(steps=5, save_every=2), tmp_path, progress=False)
    loss_fn = trainer.loss_fn

    def poisoned(cond, x, step):
        loss = loss_fn(cond, x, step)
        return loss * float("nan") if step == 3 else loss

    trainer.loss_fn = poisoned
    with pytest.raises(NonFiniteLossError, match="step 4: the loss is nan"):
        trainer.train()
    assert load_checkpoint(tmp_path)["step"] == 2


def test_resuming_with_a_different_objective_is_refused(tmp_path):
    train(tiny(steps=1), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="different config.*optim"):
        Trainer(tiny(steps=2, optim={"lr": 1e-3}), tmp_path, progress=False)
    Trainer(tiny(steps=2, log_every=2), tmp_path, progress=False)  # loop settings may change


def test_a_run_saved_before_an_option_existed_resumes_with_its_default(tmp_path, monkeypatch):
    """A checkpoint whose config lacks keys added since (here objective.guidance and steps_probs, added after
    runs had been saved) resumes as the same run; a key it has with another value is still refused."""
    to_dict = TrainConfig.to_dict

    def older(config):
        saved = to_dict(config)
        for key in ("guidance", "steps_probs"):
            del saved["objective"][key]
        return saved

    with monkeypatch.context() as patch:
        patch.setattr(TrainConfig, "to_dict", older)
        train(tiny(steps=1), tmp_path, progress=False)
    assert "guidance" not in load_checkpoint(tmp_path)["config"]["objective"]
    train(tiny(steps=2), tmp_path, progress=False)
    assert load_checkpoint(tmp_path)["step"] == 2
    with pytest.raises(ConfigError, match="different config.*objective"):
        Trainer(tiny(steps=3, objective={"guidance": [0, 2]}), tmp_path, progress=False)


TRAIN_ARGS = ["train", "--config", "tiny-teacher", "--no-progress", "--set", "data.resolution=8", "--set",
              "optim.batch_size=8", "--set", "log_every=1", "--set", "save_every=1", "--set", "eval_samples=20",
              "--set", "sample_steps=2", "--set", "keep=2"]


def test_a_killed_training_process_resumes_from_its_last_complete_checkpoint(tmp_path):
    steps = ["--set", "steps=30"]
    whole = tmp_path / "whole"
    assert cli(*TRAIN_ARGS, *steps, "--out", str(whole)).returncode == 0
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    during_save = False
    for _attempt in range(5):  # a save lasts milliseconds: retry if the run ends before one is caught
        shutil.rmtree(killed, ignore_errors=True)
        process = subprocess.Popen([sys.executable, "-m", "mcm_fast", *TRAIN_ARGS, *steps, "--out", str(killed)],
                                   cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            names = os.listdir(killed) if killed.exists() else []
            if any(n.startswith("step-") for n in names) and any(n.startswith(".tmp-") for n in names):
                process.send_signal(signal.SIGKILL)  # in the middle of writing a checkpoint
                during_save = True
                break
        process.wait()
        if during_save:
            break
    assert during_save, "no save could be interrupted in 5 runs"
    interrupted_at = load_checkpoint(killed)["step"]
    assert 1 <= interrupted_at < 30
    result = cli(*TRAIN_ARGS, *steps, "--out", str(killed))
    assert result.returncode == 0, result.stderr
    assert losses(killed) == losses(whole)
    assert not any(n.startswith(".tmp-") for n in os.listdir(killed))


KILL_AFTER = """
import os, signal, sys
from mcm_fast.cli import main
from mcm_fast.train.loop import Trainer

real = getattr(Trainer, sys.argv[1])


def then_die(self, *args, **kwargs):
    out = real(self, *args, **kwargs)
    if self.step == self.config.steps:
        os.kill(os.getpid(), signal.SIGKILL)
    return out


setattr(Trainer, sys.argv[1], then_die)
main(sys.argv[2:])
"""


@pytest.mark.parametrize("method", ["save", "write_grid"])
def test_a_run_killed_after_its_final_checkpoint_finishes_its_grid_and_evaluation_on_rerun(tmp_path, method):
    args = [*TRAIN_ARGS, "--set", "steps=3"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert cli(*args, "--out", str(whole)).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    died = subprocess.run([sys.executable, "-c", KILL_AFTER, method, *args, "--out", str(killed)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert died.returncode == -signal.SIGKILL, died.stderr
    grid = Path("samples") / "step-000000003.png"
    assert (killed / grid).exists() == (method == "write_grid") and '"eval"' not in (killed / "log.jsonl").read_text()
    result = cli(*args, "--out", str(killed))
    assert result.returncode == 0, result.stderr
    assert (killed / grid).read_bytes() == (whole / grid).read_bytes()
    evals, whole_evals = ([json.loads(line)["eval"] for line in (run / "log.jsonl").read_text().splitlines()
                           if '"eval"' in line] for run in (killed, whole))
    assert evals == whole_evals and len(evals) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_on_the_same_global_batch(tmp_path, strategy):
    args = [*TRAIN_ARGS, "--set", "steps=3", "--set", "save_every=2", "--set", "model_options.dropout=0.1",
            "--set", f"strategy={strategy}"]
    single = tmp_path / "single"
    result = cli(*args, "--set", "optim.accumulate=2", "--out", str(single))
    assert result.returncode == 0, result.stderr
    ddp = tmp_path / strategy
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for steps in (2, 3):  # the second run resumes the first from its checkpoint at step 2
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_port", str(_free_port()), "-m", "mcm_fast", *args, "--set", f"steps={steps}",
                                 "--out", str(ddp)],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-5)
    a, b = load_checkpoint(single), load_checkpoint(ddp)
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-4, atol=1e-6, msg=key)
