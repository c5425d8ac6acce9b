"""Damaged run directories: every kind of damage is refused with one line naming the file, a run directory
falls back to its newest checkpoint that verifies (with a warning), resuming never restarts or overwrites,
and nothing in the directory is deleted or changed."""
import hashlib
import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load, save
from torch import nn

from mcm_fast.cli import main
from mcm_fast.train.build import load_model
from mcm_fast.train.checkpoint import DamagedCheckpointWarning, _checksum, load_checkpoint, save_checkpoint
from mcm_fast.train.config import ConfigError, load_config
from mcm_fast.train.loop import Trainer, train

TINY = {"preset": "tiny-teacher", "data": {"resolution": 8}, "optim": {"batch_size": 8, "warmup": 2}, "log_every": 1,
        "eval_samples": 20, "sample_steps": 2, "save_every": 1}


def snapshot(root) -> dict:
    """Every path under root (links as links) with the sha256 of its bytes: to prove nothing changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                out[path] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                out[path] = hashlib.sha256(open(path, "rb").read()).hexdigest()
            else:
                out[path] = "dir"
    return out


def edit_manifest(ckpt, change, reseal=False):
    """Applies change(manifest) to checkpoint.json; with reseal, records matching checksums (a forgery that
    passes the checksums, to reach the checks behind them)."""
    file = ckpt / "checkpoint.json"
    manifest = json.loads(file.read_text())
    if reseal:
        manifest["sha256"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpt.glob("*.safetensors")}
    change(manifest)
    if reseal:
        manifest["checksum"] = _checksum(manifest)
    file.write_text(json.dumps(manifest))


def rewrite_tensors(ckpt, entry, change, reseal):
    """Replaces the tensors of one entry by change(tensors), optionally resealing the manifest."""
    file = ckpt / f"{entry}.safetensors"
    file.write_bytes(save(change(load(file.read_bytes()))))
    if reseal:
        edit_manifest(ckpt, lambda m: None, reseal=True)


def flip_byte(file):
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's data
    file.write_bytes(bytes(data))


def symlink_out(ckpt, name, outside):
    """Replaces ckpt/name by a symlink to an identical copy outside the run directory."""
    copy = outside / name
    os.replace(ckpt / name, copy)
    os.symlink(copy, ckpt / name)


def first_float(tensors):
    """The first (by name) floating-point tensor of at least 2 elements: one whose shape [1] is wrong."""
    return min(k for k, v in tensors.items() if v.is_floating_point() and v.numel() >= 2)


# kind -> (damage(ckpt, outside), the file the error names, a phrase of the error)
DAMAGE = {
    "manifest-garbage": (lambda c, o: (c / "checkpoint.json").write_bytes(b"\x00\xff\xfegarbage"),
                         "checkpoint.json", "malformed JSON"),
    "manifest-empty": (lambda c, o: (c / "checkpoint.json").write_bytes(b""), "checkpoint.json", "malformed JSON"),
    "manifest-list": (lambda c, o: (c / "checkpoint.json").write_text("[1, 2]"), "checkpoint.json",
                      "expected format 'mcm_fast.checkpoint', got 'list'"),
    "manifest-pickle": (lambda c, o: (c / "checkpoint.json").write_bytes(pickle.dumps({"format": 1})),
                        "checkpoint.json", "malformed JSON"),
    "manifest-deeply-nested": (lambda c, o: (c / "checkpoint.json").write_text("[" * 100_000 + "]" * 100_000),
                               "checkpoint.json", "malformed JSON"),
    "manifest-missing": (lambda c, o: (c / "checkpoint.json").unlink(), "checkpoint.json", "missing"),
    "manifest-edited": (lambda c, o: edit_manifest(c, lambda m: m.update(step=7)), "checkpoint.json",
                        "checksum does not match"),
    "config-a-list": (lambda c, o: edit_manifest(c, lambda m: m.update(config=[1, 2])), "checkpoint.json",
                      "checksum does not match"),
    "version-flipped-to-1": (lambda c, o: edit_manifest(c, lambda m: m.update(version=1)), "checkpoint.json",
                             "checksum does not match"),
    "version-unknown": (lambda c, o: edit_manifest(c, lambda m: m.update(version=3), reseal=True), "checkpoint.json",
                        "expected version 2, got 3"),
    "sha256-missing": (lambda c, o: edit_manifest(c, lambda m: m["sha256"].pop("model.safetensors"), reseal=True),
                       "model.safetensors", "no sha256 recorded"),
    "tensor-byte-flipped": (lambda c, o: flip_byte(c / "model.safetensors"), "model.safetensors", "sha256 differs"),
    "tensor-truncated": (lambda c, o: (c / "ema.safetensors").write_bytes((c / "ema.safetensors").read_bytes()[:100]),
                         "ema.safetensors", "sha256 differs"),
    "tensor-missing": (lambda c, o: (c / "ema.safetensors").unlink(), "ema.safetensors", "missing"),
    "tensor-int8": (lambda c, o: rewrite_tensors(c, "model", lambda t: {k: v.to(torch.int8) for k, v in t.items()},
                                                 reseal=False), "model.safetensors", "sha256 differs"),
    "tensor-garbage-resealed": (lambda c, o: ((c / "ema.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}garbage"),
                                              edit_manifest(c, lambda m: None, reseal=True)),
                                "ema.safetensors", "corrupt"),
    "symlinked-manifest": (lambda c, o: symlink_out(c, "checkpoint.json", o), "checkpoint.json",
                           "outside the run directory"),
    "symlinked-tensors": (lambda c, o: symlink_out(c, "model.safetensors", o), "model.safetensors",
                          "outside the run directory"),
}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A 2-step tiny teacher run with checkpoints at steps 1 and 2 (copied by each test before damage)."""
    out = tmp_path_factory.mktemp("good") / "run"
    train(load_config({**TINY, "steps": 2}), out, progress=False)
    return out


@pytest.fixture
def run(good_run, tmp_path):
    """A fresh copy of good_run and an `outside` folder next to it."""
    shutil.copytree(good_run, tmp_path / "run")
    (tmp_path / "outside").mkdir()
    return tmp_path / "run", tmp_path / "outside"


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_checkpoint_is_refused_in_one_line_naming_the_file(run, kind):
    run, outside = run
    damage, name, phrase = DAMAGE[kind]
    ckpt = run / "step-000000002"
    damage(ckpt, outside)
    before = snapshot(run.parent)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        load_checkpoint(ckpt)
    text = str(error.value)
    assert text.startswith(f"{ckpt / name}: ") and "\n" not in text and phrase in text, text
    assert snapshot(run.parent) == before


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_run_directory_loads_its_newest_verified_checkpoint_and_warns(run, kind):
    run, outside = run
    damage, name, phrase = DAMAGE[kind]
    damage(run / "step-000000002", outside)
    before = snapshot(run.parent)
    with pytest.warns(DamagedCheckpointWarning) as caught:
        state = load_checkpoint(run)
    assert state["step"] == 1 and state["path"] == run / "step-000000001"
    message = str(caught[0].message)
    assert message.startswith(f"{run / 'step-000000002' / name}: ") and "\n" not in message, message
    assert snapshot(run.parent) == before


@pytest.mark.parametrize("kind", ["manifest-garbage", "tensor-byte-flipped", "symlinked-tensors"])
def test_a_run_directory_with_no_verified_checkpoint_is_refused_in_one_line(run, kind):
    run, outside = run
    damage, name, phrase = DAMAGE[kind]
    for step in ("step-000000001", "step-000000002"):
        damage(run / step, outside) if kind != "symlinked-tensors" or step.endswith("2") else flip_byte(
            run / step / "model.safetensors")
    before = snapshot(run.parent)
    with pytest.raises(ValueError) as error:
        load_checkpoint(run)
    text = str(error.value)
    assert text.startswith(f"{run / 'step-000000002' / name}: ") and "\n" not in text and "2 tried" in text
    with pytest.raises(ValueError, match="2 tried"):
        Trainer(load_config({**TINY, "steps": 3}), run, progress=False)  # refused: never restarted from step 0
    assert snapshot(run.parent) == before


@pytest.mark.parametrize("kind", DAMAGE)
def test_resuming_skips_a_damaged_checkpoint_keeps_it_and_trains_the_same(run, kind, good_run):
    run, outside = run
    damage, name, _ = DAMAGE[kind]
    damaged = run / "step-000000002"
    damage(damaged, outside)
    before = {path.replace(str(damaged), str(damaged) + ".damaged"): value
              for path, value in snapshot(damaged).items()}
    with pytest.warns(DamagedCheckpointWarning, match=f"{damaged / name}: "):
        trainer = Trainer(load_config({**TINY, "steps": 2}), run, progress=False)
    assert trainer.step == 1
    with pytest.warns(DamagedCheckpointWarning, match="kept as step-000000002.damaged"):
        trainer.train()
    assert snapshot(run / "step-000000002.damaged") == before  # kept, byte for byte
    for entry in ("model", "ema", "optimizer"):
        a, b = load_checkpoint(run)[entry], load_checkpoint(good_run)[entry]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    good_rows = [json.loads(line) for line in (good_run / "log.jsonl").read_text().splitlines()]
    assert [r.get("loss") for r in rows] == [r.get("loss") for r in good_rows]


@pytest.mark.parametrize("change, message", [
    (lambda t: {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in t.items()},
     r"tensor .*: expected torch.float32 .*got torch.int8"),
    (lambda t: {k: v.flatten()[:1] if k == first_float(t) else v for k, v in t.items()},
     r"tensor '.*': expected .* got"),
    (lambda t: {k: v for k, v in t.items() if k != first_float(t)}, r"expected the tensors of the model; missing"),
])
def test_tensors_that_pass_the_checksums_are_checked_against_the_model(run, change, message):
    run, _ = run
    for step in ("step-000000001", "step-000000002"):
        rewrite_tensors(run / step, "ema", change, reseal=True)
        rewrite_tensors(run / step, "model", change, reseal=True)
    before = snapshot(run)
    with pytest.raises(ValueError, match=f"^{run / 'step-000000002' / 'ema.safetensors'}: {message}"):
        load_model(run)
    with pytest.raises(ValueError, match=f"^{run / 'step-000000002' / 'model.safetensors'}: {message}"):
        Trainer(load_config({**TINY, "steps": 3}), run, progress=False)
    assert snapshot(run) == before


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(config=[1, 2]), "expected 'config' a mapping"),
    (lambda m: m.update(data_info={"shape": "1x8x8", "num_classes": 10}), "expected 'data_info'"),
    (lambda m: m.update(data_info={"shape": [2 ** 40], "num_classes": 10}), "its config is invalid: model: a UViT"),
    (lambda m: m["config"]["optim"].update(lr=-1.0), "its config is invalid: optim.lr"),
])
def test_a_resealed_manifest_with_a_bad_training_record_is_refused_by_load_model(run, change, message):
    run, _ = run
    edit_manifest(run / "step-000000002", change, reseal=True)
    with pytest.raises(ValueError, match=f"^{run / 'step-000000002' / 'checkpoint.json'}: {message}"):
        load_model(run / "step-000000002")


@pytest.mark.parametrize("kind", DAMAGE)
def test_sample_on_a_damaged_run_warns_in_one_line_and_on_a_damaged_step_exits_1(run, kind, capsys):
    run, outside = run
    damage, name, phrase = DAMAGE[kind]
    damage(run / "step-000000002", outside)
    before = snapshot(run)
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--steps", "1", "--out", str(outside / "a.png")]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"mcm-fast sample: warning: {run / 'step-000000002' / name}: ") and err.count("\n") == 1, err
    assert main(["sample", "--ckpt", str(run / "step-000000002"), "--out", str(outside / "b.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mcm-fast sample: {run / 'step-000000002' / name}: ") and err.count("\n") == 1, err
    assert phrase in err and snapshot(run) == before


# ----------------------------------------------------------------- non-finite weights
def poisoned(value: float) -> nn.Module:
    module = nn.Linear(2, 2)
    with torch.no_grad():
        module.bias[1] = value
    return module


def test_non_finite_weights_are_never_saved(tmp_path):
    with pytest.raises(ValueError, match=r"^step 3: model\['bias'\] holds non-finite values; no checkpoint written"):
        save_checkpoint(tmp_path, poisoned(float("inf")), step=3)
    with pytest.raises(ValueError, match=r"^step 3: ema\['bias'\] holds non-finite"):
        save_checkpoint(tmp_path, nn.Linear(2, 2), step=3, ema=poisoned(float("nan")))
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.full((1, 2), float("inf"))).sum().backward()
    optimizer.step()
    with pytest.raises(ValueError, match=r"^step 3: optimizer\['optimizer/state/0/exp_avg'\] holds non-finite"):
        save_checkpoint(tmp_path, nn.Linear(2, 2), step=3, optimizer=optimizer)
    with pytest.raises(ValueError, match=r"^step 3: model\['bias'\] holds non-finite"):
        save_checkpoint(tmp_path, poisoned(float("-inf")).state_dict(), step=3)  # a state dict, as the trainer saves
    assert not tmp_path.exists() or not os.listdir(tmp_path)


def test_a_run_whose_weights_become_non_finite_stops_and_keeps_its_last_finite_checkpoint(tmp_path):
    trainer = Trainer(load_config({**TINY, "steps": 4}), tmp_path, progress=False)
    real_step = trainer.optimizer.step

    def poisoned_step(*args, **kwargs):
        real_step(*args, **kwargs)
        if trainer.step == 1:  # the update of step 2 (self.step counts finished steps)
            with torch.no_grad():
                next(trainer.net.parameters()).fill_(float("inf"))

    trainer.optimizer.step = poisoned_step
    with pytest.raises(ValueError, match=r"^step 2: model\['.*'\] holds non-finite values; no checkpoint written"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000000001"]
    state = load_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_warnings_are_one_line_on_the_command_line(run, capsys):
    run, _ = run
    flip_byte(run / "step-000000002" / "ema.safetensors")
    assert main(["eval", "--ckpt", str(run), "--steps", "1", "--n", "20"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mcm-fast eval: warning: ")


def test_a_config_error_on_resume_names_the_key(run):
    run, _ = run
    with pytest.raises(ConfigError, match="different config"):
        Trainer(load_config({**TINY, "steps": 2, "seed": 5}), run, progress=False)
